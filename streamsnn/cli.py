"""The ``streamsnn`` command.

Each subcommand is a small handler that parses nothing itself and calls the
library; errors of the project's own type are printed as one line and give
exit code 2, so users see the message (file, offset, field), not a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys

from .errors import StreamsnnError


def _cmd_info(args) -> int:
    from .io import recording_info

    for path in args.files:
        info = recording_info(path, sensor_size=args.sensor_size)
        if args.json:
            print(json.dumps(info))
        else:
            width = max(len(k) for k in info)
            print(f"{path}")
            for key, value in info.items():
                print(f"  {key:<{width}}  {value}")
    return 0


def _cmd_convert(args) -> int:
    from .io import convert_to_store

    stats = convert_to_store(args.input, args.output, sensor_size=args.sensor_size,
                             overwrite=args.force)
    print(json.dumps(stats))
    return 0


def _cmd_train(args) -> int:
    from .training.trainer import train_main

    return train_main(args)


def _cmd_eval(args) -> int:
    from .training.evaluate import eval_main

    return eval_main(args)


def _cmd_run(args) -> int:
    from .pipeline import run_main

    return run_main(args)


def _cmd_subscribe(args) -> int:
    from .bus import subscribe_main

    return subscribe_main(args)


def _cmd_keys(args) -> int:
    from .bus import keys_main

    return keys_main(args)


def _cmd_demo(args) -> int:
    from .pipeline import demo_main

    return demo_main(args)


def _cmd_view(args) -> int:
    from .view import view_main

    return view_main(args)


def _sensor_size(text: str):
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts if p.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT[xPOLARITIES], got {text!r}") from exc
    if len(values) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT[xPOLARITIES], got {text!r}")
    return values if len(values) == 3 else values + (2,)


def _height_width(text: str):
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, got {text!r}")
    return values


def _add_dataset_options(p, default_help: str = "nmnist") -> None:
    from .datasets import DATASETS

    p.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help=f"dataset layout under --data (default: {default_help})")
    p.add_argument("--download", action="store_true", help="download the dataset with tonic if absent (network)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamsnn",
        description="Event-camera streams to early decisions with stateful spiking networks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('streamsnn').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="format, sensor size, event count and time span of recordings")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--sensor-size", type=_sensor_size, default=None,
                   help="WIDTHxHEIGHT[xP] for files whose header does not say")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(handler=_cmd_info)

    p = sub.add_parser("convert", help="convert any readable recording to the HDF5 event store")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT.h5")
    p.add_argument("--sensor-size", type=_sensor_size, default=None)
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(handler=_cmd_convert)

    p = sub.add_parser("train", help="train a spiking network offline (TET + STR/RCS)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="dataset root as tonic extracts it (for nmnist: Train/<class>/*.bin, Test/<class>/*.bin)")
    _add_dataset_options(p)
    p.add_argument("--recipe", default=None, help="named recipe (default: the dataset's; see docs/anytime.md)")
    p.add_argument("--model", default=None, help="model name (nmnist, dvsgesture, cifar10dvs; default: the recipe's)")
    p.add_argument("--timesteps", type=int, default=None, help="frames per sample, T (default: the recipe's)")
    p.add_argument("--time-window", type=float, default=None, help="frame length in microseconds (default: the recipe's)")
    p.add_argument("--input-size", type=_height_width, default=None, metavar="HxW",
                   help="resize frames to this model input (default: the recipe's, else the sensor's)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 9:1 split (cifar10dvs, ncaltech101)")
    p.add_argument("--no-amp", action="store_true", help="no bf16 mixed precision on CUDA")
    p.add_argument("--reg", choices=["none", "str", "rcs"], default=None, help="regulariser on top of TET (default str)")
    p.add_argument("--reg-strength", type=float, default=None, help="regulariser weight (default per method)")
    p.add_argument("--str-variant", default=None, help="STR formula: stf (default), deferral or l2 (docs/anytime.md)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=None, metavar="DIR", help="folder for the binned-frame HDF5 cache")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", required=True, metavar="CKPT.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("eval", help="anytime evaluation: accuracy against mean timesteps (JSON + PNG)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.add_argument("--data", required=True, metavar="DIR")
    _add_dataset_options(p, default_help="the checkpoint's")
    p.add_argument("--split", default="Test", help="Train or Test")
    p.add_argument("--json", default=None, metavar="OUT.json")
    p.add_argument("--plot", default=None, metavar="OUT.png")
    p.add_argument("--cache", default=None, metavar="DIR")
    p.add_argument("--device", default=None)
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("run", help="the streaming job: source -> binner -> SNN -> cutoff -> ZeroMQ")
    p.add_argument("pipeline", nargs="?", default=None, metavar="PIPELINE.toml",
                   help="a pipeline definition; command-line options override its values")
    p.add_argument("--source", action="append", default=None, metavar="SRC",
                   help="file, folder of samples, dv://HOST:PORT or camera[:SERIAL]; repeat for several streams")
    p.add_argument("--checkpoint", default=None, metavar="CKPT")
    p.add_argument("--publish", default=None, metavar="ENDPOINT", help="default tcp://127.0.0.1:5556")
    p.add_argument("--speed", type=float, default=None, help="replay speed: 1 real time, 0 as fast as possible")
    p.add_argument("--loop", action="store_true", default=None, help="replay files forever")
    p.add_argument("--log", default=None, metavar="decisions.h5", help="append every decision to this HDF5 log")
    p.add_argument("--cutoff-epsilon", type=float, default=None, help="confidence cutoff: exit when max softmax > 1 - E")
    p.add_argument("--max-timesteps", type=int, default=None)
    p.add_argument("--queue-policy", choices=["block", "drop"], default=None,
                   help="when inference falls behind: block the source or drop the oldest events")
    p.add_argument("--curve-keys", default=None, metavar="DIR", help="CurveZMQ: server key and allowed clients")
    p.add_argument("--device", default=None)
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("subscribe", help="print each message from a streamsnn publisher as one JSON line")
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("--stream", default=None, help="only this stream")
    p.add_argument("--topic", choices=["decision", "status", "all"], default="all")
    p.add_argument("--count", type=int, default=None, help="exit after this many messages")
    p.add_argument("--curve-keys", default=None, metavar="DIR", help="client key pair and the server public key")
    p.set_defaults(handler=_cmd_subscribe)

    p = sub.add_parser("keys", help="generate CurveZMQ key pairs for access control")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--name", action="append", default=None, help="client key pair names (default: client)")
    p.set_defaults(handler=_cmd_keys)

    p = sub.add_parser("demo", help="replay N-MNIST through the bundled checkpoint and show decisions")
    p.add_argument("--data", default=None, metavar="DIR", help="N-MNIST root holding Test/ (or STREAMSNN_DATA)")
    p.add_argument("--publish", default="tcp://127.0.0.1:5556", metavar="ENDPOINT")
    # Real time by default, so a newcomer watches decisions arrive as a camera would give them.
    p.add_argument("--speed", type=float, default=1.0, help="1 real time (default), 0 as fast as possible")
    p.add_argument("--checkpoint", default=None, metavar="CKPT", help="default: the bundled N-MNIST checkpoint")
    p.add_argument("--limit", type=int, default=None, help="at most this many samples")
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("view", help="render events or binned frames to PNG/GIF")
    p.add_argument("source", metavar="FILE|SRC")
    p.add_argument("--out", required=True, metavar="OUT.png|OUT.gif")
    p.add_argument("--time-window", type=float, default=30_000.0, help="frame length in microseconds")
    p.add_argument("--frames", type=int, default=None, help="at most this many frames")
    p.add_argument("--sensor-size", type=_sensor_size, default=None)
    p.add_argument("--show", action="store_true", help="also open a window (needs a display)")
    p.set_defaults(handler=_cmd_view)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except StreamsnnError as exc:
        print(f"streamsnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"streamsnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
