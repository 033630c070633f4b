#!/usr/bin/env bash
# Optional system packages, installed only when running as root with apt-get: jemalloc (faster CPU training),
# the Debian Fashion-MNIST package, the emoji font and names (colour images with captions) and the fortunes
# corpus (labelled text). Failures are reported, not fatal: the steps that need a package say so themselves.
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || exit 0
want=""
[ -f /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ] || [ -f /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 ] || want="$want libjemalloc2"
[ -d /usr/share/datasets/fashion-mnist ] || want="$want dataset-fashion-mnist"
[ -d /usr/share/games/fortunes ] || want="$want fortunes"   # labelled text for evaluating text encoders
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || want="$want fonts-noto-color-emoji"  # emoji images
[ -f /usr/share/unicode/emoji/emoji-test.txt ] || want="$want unicode-data"                      # emoji names
[ -z "$want" ] && exit 0
export DEBIAN_FRONTEND=noninteractive
echo ">> apt-get install$want"
apt-get install -y -q $want >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1; apt-get install -y -q $want >/dev/null 2>&1; } \
  || echo ">> could not install$want with apt-get (continuing: jemalloc is optional, the data step has fallbacks)"
exit 0
