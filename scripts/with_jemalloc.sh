#!/usr/bin/env bash
# Run a command with jemalloc preloaded when it is installed (CPU training is 1.5-2.4x faster with it here:
# glibc returns large activation buffers to the OS every step). Falls back to the default allocator.
for lib in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2; do
  if [ -f "$lib" ]; then
    export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
    export MALLOC_CONF="${MALLOC_CONF:-oversize_threshold:0,background_thread:false,dirty_decay_ms:-1,muzzy_decay_ms:-1}"
    break
  fi
done
exec "$@"
