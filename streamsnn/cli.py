"""The ``streamsnn`` command.

Every argparse handler of the project lives here: each subcommand is a small
handler that turns the parsed options into the library's typed configs
(PipelineConfig, TrainConfig, ...) and calls the library; errors of the project's own type are printed as one line and give
exit code 2, so users see the message (file, offset, field), not a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from .errors import ConfigError, StreamsnnError


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


# --------------------------------------------------------------------------- training

def _train_config(args):
    """The TrainConfig of ``streamsnn train``: the recipe (``--recipe``, else the one named after
    ``--dataset``) with the options given over it."""
    from .training.recipes import train_config

    name = args.recipe or args.dataset or "nmnist"
    overrides = {"dataset": args.dataset, "model": args.model, "timesteps": args.timesteps,
                 "time_window": args.time_window, "reg": args.reg, "reg_strength": args.reg_strength,
                 "str_variant": args.str_variant,
                 "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                 "input_hw": args.input_size, "split_seed": args.split_seed,
                 "amp": False if args.no_amp else None}
    return train_config(name, **overrides)


def _train_command(args) -> str:
    """The command line that reproduces this run: the argv when run as ``streamsnn``, else rebuilt."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "streamsnn" and "train" in argv[1:]:
        return "streamsnn " + " ".join(shlex.quote(a) for a in argv[1:])
    parts = ["streamsnn", "train", "--data", str(args.data)]
    optional = [("--dataset", args.dataset, None), ("--recipe", args.recipe, None), ("--model", args.model, None),
                ("--reg", args.reg, None), ("--timesteps", args.timesteps, None),
                ("--time-window", args.time_window, None), ("--reg-strength", args.reg_strength, None),
                ("--str-variant", args.str_variant, None),
                ("--epochs", args.epochs, None), ("--batch-size", args.batch_size, None), ("--lr", args.lr, None),
                ("--input-size", "x".join(map(str, args.input_size)) if args.input_size else None, None),
                ("--seed", args.seed, 0), ("--split-seed", args.split_seed, 0)]
    for flag, value, default in optional:
        if value is not None and value != default:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    parts += ["--out", str(args.out)]
    return " ".join(shlex.quote(p) for p in parts)


def _cmd_train(args) -> int:
    from .training.trainer import configure_threads, train

    configure_threads()
    train(args.data, args.out, _train_config(args), cache=args.cache, device=args.device,
          progress=not args.no_progress, command=_train_command(args), download=args.download)
    return 0


def _cmd_eval(args) -> int:
    from .training.evaluate import evaluate_checkpoint, plot_report
    from .training.trainer import configure_threads

    configure_threads()
    report, _, _ = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.cache, args.device,
                                       dataset=args.dataset, download=args.download)
    c = report.get("checkpoint_cutoff")
    print(f"{args.split}: {report['samples']} samples, accuracy at T = {report['timesteps']}: "
          f"{report['full_accuracy']:.4f}; oracle mean timesteps {report['oracle_mean_timesteps']:.2f}")
    if c:
        print(f"checkpoint cutoff ({c['policy']} {c.get('epsilon', c.get('beta'))}): accuracy {c['accuracy']:.4f} "
              f"at {c['mean_timesteps']:.2f} mean timesteps")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"report written to {args.json}")
    if args.plot:
        plot_report(report, args.plot, title=f"{report['model']} ({report['reg']}) on {args.split}")
        print(f"plot written to {args.plot}")
    return 0


# --------------------------------------------------------------------------- the streaming job

def _run_config(args):
    """``streamsnn run [PIPELINE.toml] --source ... --checkpoint ...``: the file, then the options over it."""
    from .stream.config import PipelineConfig, SourceConfig, load_config, validate

    config = load_config(args.pipeline) if getattr(args, "pipeline", None) else PipelineConfig()
    if getattr(args, "pipeline", None) is None:
        config.origin = "command line"
    speed = getattr(args, "speed", None)
    loop = getattr(args, "loop", None)
    if args.source:
        # --source replaces the file's sources; the file's first [[source]] (if any) gives the other settings
        template = config.sources[0] if config.sources else SourceConfig(uri="")
        config.sources = [dataclasses.replace(template, uri=uri, stream=template.stream if len(args.source) == 1
                                              else None) for uri in args.source]
    for source in config.sources:
        if speed is not None:
            source.speed = speed
        if loop is not None:
            source.loop = loop
    for attr, option in (("checkpoint", "checkpoint"), ("endpoint", "publish"), ("log", "log"),
                         ("cutoff_epsilon", "cutoff_epsilon"), ("max_timesteps", "max_timesteps"),
                         ("queue_policy", "queue_policy"), ("curve_keys", "curve_keys"), ("device", "device")):
        value = getattr(args, option, None)
        if value is not None:
            setattr(config, attr, value)
    if not config.sources:
        raise ConfigError(f"{config.origin}: no source; give --source SRC (file, dataset folder, "
                          "dv://HOST:PORT or camera[:SERIAL]) or a [[source]] table")
    if not config.checkpoint:
        raise ConfigError(f"{config.origin}: no checkpoint; give --checkpoint CKPT or [model].checkpoint")
    return validate(config)


def _cmd_export(args) -> int:
    from .snn.nir_io import export_checkpoint

    print(json.dumps(export_checkpoint(args.checkpoint, args.output, dt=args.dt)))
    return 0


def _cmd_import_nir(args) -> int:
    from .snn.nir_io import import_nir

    print(json.dumps(import_nir(args.input, args.output, dt=args.dt)))
    return 0


def _cmd_run(args) -> int:
    """``streamsnn run``: exit code 0 at the end of the sources, 1 after a source error,
    130 after Ctrl-C, 143 after SIGTERM (both clean: log closed, last messages sent)."""
    from .stream.job import Pipeline

    config = _run_config(args)
    pipeline = Pipeline(config)
    try:
        return _run_pipeline(pipeline, config)
    finally:
        pipeline.close()   # idempotent: run() closed it unless something failed before


def _run_pipeline(pipeline, config) -> int:
    from .stream.job import EXIT_SIGINT, EXIT_SIGTERM

    pipeline.open()
    names = ", ".join(f"{w.name} ({w.source.uri}, {w.queue.policy})" for w in pipeline.streams)
    print(f"streamsnn run: {names} -> {pipeline.endpoint}"
          + (f", log {config.log}" if config.log else "")
          + f"; T={pipeline.max_timesteps}, window {pipeline.time_window} us, cutoff {pipeline.policy!r}",
          file=sys.stderr, flush=True)

    def on_signal(signum, frame):
        code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        pipeline.stop(signal.Signals(signum).name, code)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = pipeline.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for status in pipeline.final_status:
        p50 = status["latency_p50_ms_total"]
        p99 = status["latency_p99_ms_total"]
        line = (f"streamsnn run: {status['stream']}: {status['state']}, {status['decisions']} decisions, "
                f"{status['frames']} frames, {status['events_processed']} events, "
                f"{status['dropped_events']} dropped")
        if p50 is not None:
            line += f", latency p50 {p50:.3f} ms p99 {p99:.3f} ms"
        if status.get("accuracy") is not None:
            line += f", accuracy {status['accuracy']:.4f}"
        if status.get("error"):
            line += f"; error: {status['error']}"
        print(line, file=sys.stderr, flush=True)
    return code


def _find_data(arg: str | None) -> Path | None:
    for candidate in (arg, os.environ.get("STREAMSNN_DATA")):
        if not candidate:
            continue
        root = Path(candidate).expanduser()
        for folder in (root, root / "NMNIST", root / "nmnist_small"):
            if (folder / "Test").is_dir():
                return folder
        if root.name == "Test" and root.is_dir():
            return root.parent
    return None


def _cmd_demo(args) -> int:
    """``streamsnn demo``: the N-MNIST Test split through the bundled checkpoint, decisions shown live."""
    from .stream.config import PipelineConfig, SourceConfig
    from .snn.checkpoint import bundled_checkpoint
    from .stream.job import Pipeline

    from .datasets import bundled_nmnist_root, download_nmnist

    # The data, in this order: what --download fetched, --data or STREAMSNN_DATA, else the bundled split.
    given = args.data or os.environ.get("STREAMSNN_DATA")
    if args.download:
        root = _find_data(str(download_nmnist(args.download)))
    elif given:
        root = _find_data(given)
        if root is None:
            print(f"streamsnn demo: {given!r} holds no Test/ folder.\n"
                  "  Put N-MNIST in the archive layout, DIR/Test/<digit>/<sample>.bin (the official N-MNIST\n"
                  "  archive extracted, or tonic's NMNIST download), then run\n"
                  "    streamsnn demo --data DIR        or   STREAMSNN_DATA=DIR streamsnn demo\n"
                  "  (with neither, the demo runs on the 100 Test samples bundled in the package)",
                  file=sys.stderr)
            return 2
    else:
        root = bundled_nmnist_root()
    checkpoint = Path(args.checkpoint) if args.checkpoint else bundled_checkpoint()
    if not checkpoint.is_file():
        raise ConfigError(f"{checkpoint}: checkpoint not found")
    config = PipelineConfig(
        name="demo", sources=[SourceConfig(uri=str(root / "Test"), stream="nmnist", speed=float(args.speed),
                                           limit=args.limit)],
        checkpoint=str(checkpoint), endpoint=args.publish, origin="streamsnn demo",
        wait_subscribers=1, wait_timeout_s=5.0, settle_s=0.1)
    pipeline = Pipeline(config)
    try:
        return _demo_pipeline(pipeline, root, checkpoint)
    finally:
        pipeline.close()   # idempotent: run() closed it unless something failed before


def _demo_pipeline(pipeline, root: Path, checkpoint: Path) -> int:
    import numpy as np

    from .stream.bus import Subscriber
    from .stream.job import EXIT_SIGINT, EXIT_SIGTERM

    pipeline.open()
    subscriber = Subscriber(pipeline.endpoint, topic="decision")
    total = len(pipeline.streams[0].source.samples)
    T = pipeline.max_timesteps
    print(f"streamsnn demo: {total} samples from {root / 'Test'} through {checkpoint.name} "
          f"(T = {T}, cutoff {pipeline.policy!r}), publishing on {pipeline.endpoint}", file=sys.stderr)
    received = []

    def on_signal(signum, frame):
        code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM   # as `streamsnn run`
        pipeline.stop(signal.Signals(signum).name, code)

    failure = []

    def run_pipeline():
        try:
            pipeline.run()
        except Exception as exc:   # said once in the main thread, not as a thread's traceback
            failure.append(exc)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    runner = threading.Thread(target=run_pipeline, name="pipeline", daemon=True)
    runner.start()
    tty = sys.stderr.isatty()
    last_print, printed = 0.0, 0
    try:
        while True:
            item = subscriber.recv(timeout_s=0.1)
            if item is not None:
                received.append(item[1])
            elif not runner.is_alive():
                break
            now = time.monotonic()
            # At most five lines a second, each only when a new decision came, and always the last one.
            if len(received) > printed and (now - last_print > 0.2 or len(received) == total):
                last_print, printed = now, len(received)
                line = _demo_line(received, total, T)
                print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
        runner.join()
    finally:
        subscriber.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if tty:
        print(file=sys.stderr)
    if failure:
        if isinstance(failure[0], StreamsnnError):
            raise failure[0]
        print(f"streamsnn demo: error: {type(failure[0]).__name__}: {failure[0]}", file=sys.stderr)
        return 1
    if not received:
        print("streamsnn demo: no decisions received", file=sys.stderr)
        return pipeline.exit_code or 1
    lat = np.array([m["latency_ms"] for m in received])
    steps = np.array([m["timesteps"] for m in received])
    acc = np.mean([m["label"] == m["target"] for m in received if "target" in m])
    print(f"samples       {len(received)} / {total}\n"
          f"accuracy      {acc:.4f}\n"
          f"timesteps     {steps.mean():.2f} on average of T = {T} (speed-up {T / steps.mean():.2f}x)\n"
          f"latency       p50 {np.percentile(lat, 50):.3f} ms, p99 {np.percentile(lat, 99):.3f} ms "
          f"(last event of the deciding frame -> message sent)\n"
          f"wall time     {pipeline.wall_s:.2f} s")
    return pipeline.exit_code


def _demo_line(received, total, T) -> str:
    import numpy as np

    n = len(received)
    with_target = [m for m in received if "target" in m]
    acc = sum(m["label"] == m["target"] for m in with_target) / max(1, len(with_target))
    steps = sum(m["timesteps"] for m in received) / n
    lat = np.percentile([m["latency_ms"] for m in received], 50)
    return (f"samples {n}/{total}  accuracy {acc:.3f}  mean timesteps {steps:.2f}/{T}  "
            f"latency p50 {lat:.2f} ms")


def _cmd_subscribe(args) -> int:
    """``streamsnn subscribe ENDPOINT [ENDPOINT ...]``: one JSON line per message (topic added as ``topic``)."""
    from .stream.bus import Subscriber

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    subscriber = Subscriber(args.endpoints, streams=[args.stream] if args.stream else None,
                            topic=args.topic, curve_keys=args.curve_keys, max_bytes=args.max_bytes,
                            rcvhwm=args.rcvhwm)
    received = 0
    reported, reported_at = 0, -1e9
    try:
        while args.count is None or received < args.count:
            item = subscriber.recv(timeout_s=0.5)
            # a flood of garbage from a rogue peer gets one line a second, not one per message
            if subscriber.malformed > reported and time.monotonic() - reported_at >= 1.0:
                reported, reported_at = subscriber.malformed, time.monotonic()
                _report_malformed(subscriber)
            if item is None:
                continue
            topic, message = item
            line = json.dumps({"topic": topic, **message}, separators=(",", ":"))
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            received += 1
    except KeyboardInterrupt:
        pass
    finally:
        if subscriber.malformed > reported:
            _report_malformed(subscriber)
        subscriber.close()
    return 0


def _report_malformed(subscriber) -> None:
    dropped = (f"; the publisher was disconnected {subscriber.disconnects} time(s) (a frame over --max-bytes, "
               "or it went away) and reconnected" if subscriber.disconnects else "")
    print(f"streamsnn subscribe: skipped {subscriber.malformed} malformed message(s) so far "
          f"(last: {subscriber.last_malformed}){dropped}", file=sys.stderr, flush=True)


def _cmd_broker(args) -> int:
    """``streamsnn broker JOB_ENDPOINT ... --publish ENDPOINT``: until Ctrl-C / SIGTERM (exit 0)."""
    from .stream.bus import Broker

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    broker = Broker(args.upstream, args.publish, curve_keys=args.curve_keys,
                    upstream_curve_keys=args.upstream_curve_keys).start()
    print(f"streamsnn broker: {', '.join(broker.upstream)} -> {broker.endpoint}", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


def _cmd_keys(args) -> int:
    from .stream.bus import generate_keys

    names = args.name or ["client"]
    written = generate_keys(args.directory, names)
    print(f"server key pair: {written['server_secret']} (publisher: streamsnn run --curve-keys {args.directory})")
    for name, folder in written["clients"].items():
        print(f"client {name!r}: {folder} (subscriber: streamsnn subscribe ENDPOINT --curve-keys {folder})")
    return 0


# --------------------------------------------------------------------------- looking at events

def _cmd_view(args) -> int:
    from .view import render_recording, show_frames

    if args.time_window <= 0:
        raise ConfigError(f"--time-window must be > 0 microseconds, got {args.time_window}")
    frames, out = render_recording(args.source, args.out, args.time_window, max_frames=args.frames,
                                   sensor_size=args.sensor_size)
    print(f"wrote {len(frames)} frame(s) of {args.time_window / 1000:g} ms to {out}")
    if args.show:
        show_frames(frames, args.time_window)
    return 0


def _sensor_size(text: str):
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts if p.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT[xPOLARITIES], got {text!r}") from exc
    if len(values) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT[xPOLARITIES], got {text!r}")
    return values if len(values) == 3 else values + (2,)


_INT32_MAX = 2**31 - 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= value <= _INT32_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {_INT32_MAX}, got {text}")
    return value


def _number(minimum: float, *, inclusive: bool = True):
    """An argparse type: a finite float >= minimum (> minimum when not inclusive); NaN and inf refused."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected a finite number {'>=' if inclusive else '>'} {minimum:g}, "
                                             f"got {text}")
        return value
    return convert


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
    from .stream.messages import MAX_MESSAGE_BYTES, RECEIVE_QUEUE_MESSAGES

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
    p.add_argument("--timesteps", type=_positive_int, default=None, help="frames per sample, T (default: the recipe's)")
    p.add_argument("--time-window", type=_number(0, inclusive=False), default=None, help="frame length in microseconds (default: the recipe's)")
    p.add_argument("--input-size", type=_height_width, default=None, metavar="HxW",
                   help="resize frames to this model input (default: the recipe's, else the sensor's)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 9:1 split (cifar10dvs, ncaltech101)")
    p.add_argument("--no-amp", action="store_true", help="no bf16 mixed precision on CUDA")
    p.add_argument("--reg", choices=["none", "str", "rcs"], default=None, help="regulariser on top of TET (default str)")
    p.add_argument("--reg-strength", type=_number(0), default=None, help="regulariser weight (default per method)")
    p.add_argument("--str-variant", default=None, help="STR formula: stf (default), deferral or l2 (docs/anytime.md)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--lr", type=_number(0, inclusive=False), default=None)
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

    p = sub.add_parser("export", help="write a checkpoint's network as a NIR graph (for other simulators and chips)")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("output", metavar="OUT.nir")
    p.add_argument("--dt", type=_number(0, inclusive=False), default=None, metavar="SECONDS",
                   help="time step the LIF time constants are stated for (default: the frame length; "
                        "snnTorch's importer assumes 1e-4)")
    p.set_defaults(handler=_cmd_export)

    p = sub.add_parser("import-nir", help="build a streamsnn checkpoint from a NIR graph")
    p.add_argument("input", metavar="IN.nir")
    p.add_argument("output", metavar="OUT.pt")
    p.add_argument("--dt", type=_number(0, inclusive=False), default=None, metavar="SECONDS",
                   help="time step the graph's time constants are meant for (default: the graph's metadata 'dt')")
    p.set_defaults(handler=_cmd_import_nir)

    p = sub.add_parser("run", help="the streaming job: source -> binner -> SNN -> cutoff -> ZeroMQ")
    p.add_argument("pipeline", nargs="?", default=None, metavar="PIPELINE.toml",
                   help="a pipeline definition; command-line options override its values")
    p.add_argument("--source", action="append", default=None, metavar="SRC",
                   help="file, folder of samples, dv://HOST:PORT or camera[:SERIAL]; repeat for several streams")
    p.add_argument("--checkpoint", default=None, metavar="CKPT", help="a streamsnn checkpoint or a NIR file (.nir)")
    p.add_argument("--publish", default=None, metavar="ENDPOINT", help="default tcp://127.0.0.1:5556")
    p.add_argument("--speed", type=_number(0), default=None, help="replay speed: 1 real time, 0 as fast as possible")
    p.add_argument("--loop", action="store_true", default=None, help="replay files forever")
    p.add_argument("--log", default=None, metavar="decisions.h5", help="append every decision to this HDF5 log")
    p.add_argument("--cutoff-epsilon", type=_number(0), default=None, help="confidence cutoff: exit when max softmax > 1 - E")
    p.add_argument("--max-timesteps", type=_positive_int, default=None)
    p.add_argument("--queue-policy", choices=["block", "drop"], default=None,
                   help="when inference falls behind: block the source or drop the oldest events")
    p.add_argument("--curve-keys", default=None, metavar="DIR", help="CurveZMQ: server key and allowed clients")
    p.add_argument("--device", default=None)
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser("subscribe", help="print each message from streamsnn publishers as one JSON line")
    p.add_argument("endpoints", nargs="+", metavar="ENDPOINT",
                   help="a job's or a broker's endpoint; several to hear several jobs at once")
    p.add_argument("--stream", default=None, help="only this stream")
    p.add_argument("--topic", choices=["decision", "status", "all"], default="all")
    p.add_argument("--count", type=_positive_int, default=None, help="exit after this many messages")
    p.add_argument("--curve-keys", default=None, metavar="DIR", help="client key pair and the server public key")
    p.add_argument("--max-bytes", type=_positive_int, default=MAX_MESSAGE_BYTES, metavar="N",
                   help="largest message frame accepted; a peer sending more is disconnected "
                        f"(default {MAX_MESSAGE_BYTES})")
    p.add_argument("--rcvhwm", type=_positive_int, default=RECEIVE_QUEUE_MESSAGES, metavar="N",
                   help="messages queued before they are printed; beyond, they are dropped "
                        f"(default {RECEIVE_QUEUE_MESSAGES})")
    p.set_defaults(handler=_cmd_subscribe)

    p = sub.add_parser("broker", help="one endpoint for many jobs: a ZeroMQ XSUB/XPUB proxy")
    p.add_argument("upstream", nargs="+", metavar="JOB_ENDPOINT", help="the publish endpoint of every job")
    p.add_argument("--publish", default=None, metavar="ENDPOINT",
                   help="where subscribers connect (default tcp://127.0.0.1:5570)")
    p.add_argument("--curve-keys", default=None, metavar="DIR",
                   help="CurveZMQ towards subscribers: server key and allowed clients (streamsnn keys DIR)")
    p.add_argument("--upstream-curve-keys", default=None, metavar="DIR",
                   help="CurveZMQ towards the jobs: a client folder DIR/clients/NAME of the jobs' keys")
    p.set_defaults(handler=_cmd_broker)

    p = sub.add_parser("keys", help="generate CurveZMQ key pairs for access control")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--name", action="append", default=None, help="client key pair names (default: client)")
    p.set_defaults(handler=_cmd_keys)

    p = sub.add_parser("demo", help="replay N-MNIST through the bundled checkpoint and show decisions")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="N-MNIST root holding Test/ (or STREAMSNN_DATA); default: the 100 bundled Test samples")
    p.add_argument("--download", default=None, metavar="DIR",
                   help="first fetch the full N-MNIST Test split with tonic into DIR (needs a network)")
    p.add_argument("--publish", default="tcp://127.0.0.1:5556", metavar="ENDPOINT")
    # Real time by default, so a newcomer watches decisions arrive as a camera would give them.
    p.add_argument("--speed", type=_number(0), default=1.0, help="1 real time (default), 0 as fast as possible")
    p.add_argument("--checkpoint", default=None, metavar="CKPT", help="default: the bundled N-MNIST checkpoint")
    p.add_argument("--limit", type=_positive_int, default=None, help="at most this many samples")
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("view", help="render events or binned frames to PNG/GIF")
    p.add_argument("source", metavar="FILE|SRC")
    p.add_argument("--out", required=True, metavar="OUT.png|OUT.gif")
    p.add_argument("--time-window", type=_number(0, inclusive=False), default=30_000.0,
                   help="frame length in microseconds")
    p.add_argument("--frames", type=_positive_int, default=None, help="at most this many frames")
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
