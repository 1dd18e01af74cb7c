"""`python -m engine generate|submit|worker|jobs|cancel|audit|bench`.

Exit codes: 0 ok, 2 bad input or usage (one line on stderr), 1 internal error. Input is checked before
torch is imported, so a refusal is quick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from engine.config import Config, load_config, set_option
from engine.errors import ModelError, UserError
from engine.families import family_of_model
from engine.jobs import JobState
from engine.logs import configure as configure_logging

if TYPE_CHECKING:
    from engine.queue.metrics import MetricsServer


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        raise UserError(f"{self.prog}: {message}", "usage")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="config file (default ./config.toml)")


def _store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help="SQLite file path or redis:// URL (default from config)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m engine", description="Render engine and job queue.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="render one video now")
    g.add_argument("image")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative", default=None)
    g.add_argument("--preset", default="quick")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--model", default=None, help="hub id, local folder, 'tiny' or 'tiny-ltx'")
    g.add_argument("--camera", default=None)
    g.add_argument("--speed", default=None)
    g.add_argument("--out", default=None)
    g.add_argument("--json", action="store_true", help="one JSON object per step on stdout")
    g.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=None,
                   help="interpolate to 24 fps (default: the preset's smooth)")
    g.add_argument("--loop", action="store_true", help="forward, then backward: a seamless loop")
    g.add_argument("--extend", type=int, default=0, metavar="N",
                   help="continue the clip N times from its last frame (same prompt and seed), joined")
    g.add_argument("--preview-dir", default=None,
                   help="write the previews of the clip as it forms here (GIFs, every [preview] every_s)")
    _common(g)

    s = sub.add_parser("submit", help="queue a job; prints the job id")
    s.add_argument("image")
    s.add_argument("--prompt", required=True)
    s.add_argument("--user", required=True)
    s.add_argument("--preset", default="quick")
    s.add_argument("--seed", type=int, default=None)
    _store(s)
    _common(s)

    w = sub.add_parser("worker", help="run the GPU worker until SIGTERM")
    _store(w)
    w.add_argument("--model", default=None)
    w.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                   help="stop as on SIGTERM when PID, this worker's parent, ends (set by python -m bot)")
    _common(w)

    j = sub.add_parser("jobs", help="list jobs, oldest first: id state user preset position")
    _store(j)
    j.add_argument("--state", action="append", choices=[str(s) for s in JobState],
                   help="only jobs in this state (repeat for several)")
    j.add_argument("--user", default=None, help="only this user's jobs, e.g. discord:1234")
    j.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    j.add_argument("--json", action="store_true")
    _common(j)

    a = sub.add_parser("audit", help="the audit log: one line per job kept (retention_days), oldest first")
    a.add_argument("--server", default=None, help="only this Discord server or Telegram chat id")
    a.add_argument("--user", default=None, help="only this user: an id, or platform:id")
    a.add_argument("--since", default=None, help="only jobs from this ISO date or time on (UTC unless given)")
    a.add_argument("--json", action="store_true")
    _store(a)
    _common(a)

    c = sub.add_parser("cancel", help="cancel a queued or running job")
    c.add_argument("job")
    _store(c)
    _common(c)

    b = sub.add_parser("bench", help="timings side by side")
    b.add_argument("--model", default="tiny", choices=["tiny", "random-full"])
    b.add_argument("--repeat", type=int, default=3)
    _common(b)
    return parser


def _config(args) -> Config:
    config = load_config(args.config)
    # Flags beat the environment and the file, and are validated as they are.
    if getattr(args, "store", None):
        set_option(config.storage, "url", args.store)
    if getattr(args, "model", None) and args.command != "bench":
        set_option(config.engine, "model", args.model)
    return config


def _validated_input(config: Config, image: str, prompt: str):
    from engine.media.validate import check_prompt, load_image_file

    lim = config.limits
    img = load_image_file(image, max_bytes=lim.max_image_bytes, max_pixels=lim.max_image_pixels,
                          min_side=lim.min_image_side)
    text = check_prompt(prompt, max_chars=lim.max_prompt_chars, blocked_words=lim.blocked_words)
    return img, text


def _build_prompt(text: str, camera: str | None, speed: str | None) -> str:
    from engine.prompts import PromptSpec, build_prompt, load_templates, normalize_choice

    spec = PromptSpec(text, camera=normalize_choice(camera) if camera else None,
                      speed=normalize_choice(speed) if speed else None)
    return build_prompt(spec, load_templates())


def _resolve_preset(config: Config, name: str, prompt: str, image) -> str:
    if name != "auto":
        config.preset(name)
        return name
    from engine.media.detail import image_detail
    from engine.prompts import resolve_auto_preset, step_advice

    return resolve_auto_preset(step_advice(prompt, image_detail(image).score))


class _ProgressBar:
    """A one-line progress bar with ETA on a terminal (stderr), or JSON lines on stdout."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.tty = sys.stderr.isatty()

    def __call__(self, step: int, total: int, elapsed: float) -> None:
        eta = elapsed / step * (total - step) if step else 0.0
        if self.as_json:
            print(json.dumps({"step": step, "total": total, "elapsed_s": round(elapsed, 3),
                              "eta_s": round(eta, 2)}), flush=True)
        elif self.tty:
            width = 30
            filled = round(width * step / total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{total} "
                             f"{elapsed:5.1f}s elapsed, ETA {eta:4.1f}s ")
            sys.stderr.flush()
            if step == total:
                sys.stderr.write("\n")


def cmd_generate(args) -> int:
    config = _config(args)
    image, text = _validated_input(config, args.image, args.prompt)
    prompt = _build_prompt(text, args.camera, args.speed)
    preset_name = _resolve_preset(config, args.preset, text, image)
    out = Path(args.out) if args.out else Path(args.image).with_suffix(".mp4")
    if args.extend < 0:
        raise UserError("--extend takes a number of extensions, 0 or more.", "usage")
    family = family_of_model(config.engine.model)
    if config.presets[preset_name].family != family:
        raise UserError(f"The '{preset_name}' preset needs an {config.presets[preset_name].family} model; "
                        f"{config.engine.model} is {family}.", "usage")

    from engine.media.clip import finish, join
    from engine.media.video import write_mp4
    from engine.render.model import load_model
    from engine.render.startup import build_renderer

    eng = config.engine
    parts = load_model(eng.model, eng.device, eng.low_vram if isinstance(eng.low_vram, bool) else None)
    # One render never pays back a compile: the CLI runs eagerly (fused QKV and decode chunking still apply).
    renderer = build_renderer(parts, eng.model_copy(update={"compile": False}), config.presets, config.data_dir)
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % (2**31)
    bar = _ProgressBar(args.json)

    def on_fallback(preset) -> None:
        msg = f"GPU out of memory: falling back to the '{preset.name}' preset"
        if args.json:
            print(json.dumps({"fell_back": preset.name}), flush=True)
        else:
            print(msg, file=sys.stderr)

    previews = _preview_writer(Path(args.preview_dir), config, preset_name, args.json) if args.preview_dir else None
    negative = args.negative if args.negative is not None else eng.negative_prompt
    preset = config.presets[preset_name]
    try:
        result = renderer.render(image, prompt, negative, preset, seed, config.presets, on_step=bar,
                                 on_fallback=on_fallback, previews=previews)
    finally:
        if previews is not None:
            previews.close()
    frames = result.frames
    for _ in range(args.extend):   # each continues from the last frame so far, as the Extend button does
        from PIL import Image

        more = renderer.render(Image.fromarray(frames[-1]), prompt, negative, preset, seed, config.presets,
                               on_step=bar, on_fallback=on_fallback)
        frames = join(frames, more.frames)
    smooth = preset.smooth if args.smooth is None else args.smooth
    frames, fps = finish(frames, result.fps, smooth_it=smooth, loop_it=args.loop)
    path = write_mp4(frames, out, fps=fps)
    if args.json:
        print(json.dumps({"path": str(path), "seed": seed, "preset": result.preset.name,
                          "fell_back": result.fell_back, "seconds": round(result.seconds, 3),
                          "width": result.width, "height": result.height, "frames": len(frames), "fps": fps}),
              flush=True)
    else:
        print(path)
    return 0


def _preview_writer(folder: Path, config: Config, preset_name: str, as_json: bool):
    """Previews as files, as a bot would show them: preview-<step>.gif every `[preview] every_s` seconds (3 when
    that is 0, since asking for the folder asks for previews)."""
    from engine.media.preview import preview_gif
    from engine.render.preview import PreviewTimer

    folder.mkdir(parents=True, exist_ok=True)
    preset = config.presets[preset_name]

    def write(step: int, frames) -> None:
        path = folder / f"preview-{step:03d}.gif"
        path.write_bytes(preview_gif(frames, preset.preview_fps(len(frames))))
        if as_json:
            print(json.dumps({"preview": str(path), "step": step}), flush=True)

    return PreviewTimer(config.preview.every_s or 3.0, write)


async def _with_service(config: Config, fn):
    from engine.queue.service import JobService

    async with JobService(config) as service:
        return await fn(service)


def cmd_submit(args) -> int:
    config = _config(args)
    image, text = _validated_input(config, args.image, args.prompt)
    preset = _resolve_preset(config, args.preset, text, image)

    async def go(service):
        return await service.submit(user=args.user, image=image, prompt_raw=text, prompt=_build_prompt(text, None, None),
                                    preset=preset, seed=args.seed, platform="cli", user_name=args.user)
    job = asyncio.run(_with_service(config, go))
    print(job.id)
    return 0


def cmd_jobs(args) -> int:
    config = _config(args)

    async def go(service):
        queued = await service.store.queued()
        positions = {j.id: i for i, j in enumerate(queued, 1)}
        states = [JobState(s) for s in args.state] if args.state else None
        return await service.store.jobs(user=args.user, states=states, limit=max(1, args.limit)), positions
    jobs, positions = asyncio.run(_with_service(config, go))
    for job in jobs:
        pos = positions.get(job.id)
        if args.json:
            print(json.dumps({"id": job.id, "state": str(job.state), "user": job.user, "preset": job.preset,
                              "position": pos}))
        else:
            print(f"{job.id} {job.state} {job.user} {job.preset} {pos if pos is not None else '-'}")
    return 0


def _since(text: str | None) -> float | None:
    import datetime as dt

    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--since: {text!r} is not an ISO date or time (e.g. 2026-11-30 or 2026-11-30T18:00)",
                        "usage") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def audit_line(job) -> str:
    import datetime as dt

    when = dt.datetime.fromtimestamp(job.created_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    score = f"{job.nsfw_score:.3f}" if job.nsfw_score >= 0 else "-"
    outcome = str(job.state) + (f":{job.error_key}" if job.error_key else "")
    return (f"{when} {job.id} {job.platform} server={job.server or '-'} channel={job.chat or '-'} "
            f"user={job.user} verdict={job.verdict or 'unchecked'} score={score} "
            f"flagged_at={job.flagged_at or '-'} outcome={outcome} reports={job.reports} "
            f"removed_by={job.removed_by or '-'} prompt={json.dumps(job.prompt_raw, ensure_ascii=False)}")


def cmd_audit(args) -> int:
    config = _config(args)
    since = _since(args.since)

    async def go(service):
        return await service.audit(server=args.server, user=args.user, since=since)
    for job in asyncio.run(_with_service(config, go)):
        if args.json:
            print(json.dumps({k: job.to_dict()[k] for k in AUDIT_FIELDS}, ensure_ascii=False))
        else:
            print(audit_line(job))
    return 0


AUDIT_FIELDS = ("id", "created_at", "platform", "server", "chat", "user", "user_name", "prompt_raw", "verdict",
                "nsfw_score", "flagged_at", "state", "error_key", "reports", "removed_by")


def cmd_cancel(args) -> int:
    config = _config(args)

    async def go(service):
        job = await service.store.get(args.job)
        if job is None:
            raise UserError(f"No job with id {args.job}.", "unknown_job")
        return await service.cancel(job.id, by_user=job.user, is_admin=True)
    job = asyncio.run(_with_service(config, go))
    print(f"{job.id} {'cancelled' if job.state == 'cancelled' else 'cancel requested'}")
    return 0


def cmd_worker(args) -> int:
    if args.parent_pid is not None:   # first thing: from here on, the parent's death stops this worker
        from engine.queue.parent import follow_parent

        if not follow_parent(args.parent_pid):
            raise UserError(f"--parent-pid {args.parent_pid}: not this worker's parent (has it ended?).",
                            "parent_gone")
    from engine.queue.worker import run_worker

    config = _config(args)
    configure_logging(config.logging)
    health = _worker_endpoint(config, beside_bot=args.parent_pid is not None)
    try:
        asyncio.run(run_worker(config))
    finally:
        if health is not None:
            health.stop()
    return 0


def _worker_endpoint(config: Config, beside_bot: bool) -> MetricsServer | None:
    """/metrics (this process's CPU, memory and GC), /healthz and /readyz on `[metrics] port`, from a thread,
    so a probe is answered while a render holds the event loop. A worker started by `python -m bot` shares
    the bot's machine and port, which the bot serves: it serves none. A port in use is one warning, not a
    worker that cannot start."""
    if not config.metrics.port or beside_bot:
        return None
    from engine.queue.metrics import process_registry, start_metrics_server

    try:
        return start_metrics_server(config.metrics.port, process_registry())
    except UserError as exc:
        logging.getLogger("engine.metrics").warning("%s; this worker serves no metrics", exc)
        return None


def cmd_bench(args) -> int:
    from engine.render.bench import run_bench

    print(run_bench(model=args.model, repeat=args.repeat))
    return 0


COMMANDS = {"generate": cmd_generate, "submit": cmd_submit, "worker": cmd_worker, "jobs": cmd_jobs,
            "cancel": cmd_cancel, "audit": cmd_audit, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (UserError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        logging.getLogger("engine").exception("internal error")
        print(f"internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
