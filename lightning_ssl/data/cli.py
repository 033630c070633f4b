"""``lightning-ssl-data``: prepare data for streaming.

    lightning-ssl-data optimize --input my_images/ --output chunks/           # an image folder (labelled if it
                                                                               # has class sub-folders)
    lightning-ssl-data optimize --input pairs.csv --output chunks/            # an image-text table (CLIP)
    lightning-ssl-data inspect chunks/                                        # what a dataset holds

Then ``lightning-ssl fit --config ... --data StreamingImageDataModule --data.input_dir chunks/`` (or an
``s3://`` URL after copying the folder to a bucket).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lightning-ssl-data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    o = sub.add_parser("optimize", help="write an image folder or an image-text CSV/JSONL into litdata chunks")
    o.add_argument("--input", required=True, help="image folder (root/<class>/<image> or any folder) or CSV/JSONL")
    o.add_argument("--output", required=True, help="local folder for the chunks (created; replaced with --overwrite)")
    lab = o.add_mutually_exclusive_group()
    lab.add_argument(
        "--labelled",
        dest="labelled",
        action="store_true",
        default=None,
        help="class sub-folders are labels (default: when there are sub-folders)",
    )
    lab.add_argument("--unlabelled", dest="labelled", action="store_false", help="every image, no labels")
    o.add_argument("--chunk-bytes", default="64MB", help="chunk size (default 64MB)")
    o.add_argument("--workers", type=int, default=None, help="processes (default: all CPU cores)")
    o.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="re-encode images whose longer side exceeds this (JPEG q=90, aspect kept); default: keep bytes",
    )
    o.add_argument("--seed", type=int, default=0, help="seed of the shuffle before writing (mixes classes in chunks)")
    o.add_argument("--no-verify", dest="verify", action="store_false", help="do not decode every image on the way in")
    o.add_argument("--overwrite", action="store_true", help="replace --output (only once the new chunks are complete)")
    o.add_argument("--image-column", default="image")
    o.add_argument("--caption-column", default="caption")
    o.add_argument("--label-column", default="label")
    i = sub.add_parser("inspect", help="print an optimized dataset's metadata and chunk count")
    i.add_argument("path")
    a = p.parse_args(argv)

    from lightning_ssl.data.streaming import check_chunks, optimize_images, read_metadata

    try:
        if a.command == "optimize":
            t0 = time.perf_counter()
            meta = optimize_images(
                a.input,
                a.output,
                labelled=a.labelled,
                chunk_bytes=a.chunk_bytes,
                num_workers=a.workers,
                max_side=a.max_side,
                seed=a.seed,
                verify=a.verify,
                overwrite=a.overwrite,
                image_column=a.image_column,
                caption_column=a.caption_column,
                label_column=a.label_column,
            )
            n_chunks = len(check_chunks(a.output)["chunks"])
            print(
                f"wrote {meta['num_items']} images ({len(meta['classes'])} classes"
                f"{', with captions' if meta['captions'] else ''}) into {n_chunks} chunks in {a.output} "
                f"in {time.perf_counter() - t0:.1f} s"
            )
        else:
            index = check_chunks(a.path)
            meta = read_metadata(a.path) or {}
            meta["chunks"] = len(index["chunks"])
            meta["items"] = sum(c["chunk_size"] for c in index["chunks"])
            meta["classes"] = meta.get("classes", [])[:20]
            print(json.dumps(meta, indent=1))
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as e:
        print(f"lightning-ssl-data: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
