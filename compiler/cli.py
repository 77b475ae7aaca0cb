"""`edgecam compile|compress|report`: the compiler's commands. Mounted by edgecam/cli.py; tvm/onnx load
only when run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from edgecam.compiler.artifact import Verification

app = typer.Typer(no_args_is_help=True)

_SIGN_HELP = "Ed25519 private key (PEM, from `edgecam keygen`) to sign the artifact's manifest with."


@app.command("compile")
def compile_command(
    model: Path = typer.Argument(..., exists=True, dir_okay=False, help="The ONNX model."),
    target: str = typer.Option(..., "--target", "-t", help="Target name, e.g. x86_64."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write (replaced atomically)."),
    mcpu: str = typer.Option(None, help="CPU to tune code for (LLVM name); default: this build host's CPU."),
    mattr: list[str] = typer.Option(
        None, help="LLVM feature to add/remove, e.g. --mattr=-avx512f (repeatable); for the camera fleet."
    ),
    arch: str = typer.Option(None, help="GPU compute capability for --target cuda, e.g. sm_87 (Jetson Orin)"),
    tolerance: float = typer.Option(
        None,
        help="Largest |TVM - ONNX Runtime| output difference accepted (absolute); default: 1e-4 for a float "
        "model, of each output's largest |value| (16 epsilons of float16 for an fp16 one); 12 quantization "
        "steps of each output for an int8 (QDQ) one.",
    ),
    samples: int = typer.Option(8, min=1, help="Inputs compared against ONNX Runtime."),
    sign_key: Path = typer.Option(None, "--sign-key", help=_SIGN_HELP),
    channels_last: bool = typer.Option(
        True,
        help="Compute convolutions channels-last on CPUs; --no-channels-last builds the imported layout "
        "(the way out when a build error blames edgecam's channels-last rewrite).",
    ),
    input_shape: list[str] = typer.Option(
        None,
        "--input-shape",
        help="Sizes for an input's open dimensions, NAME=1,3,224,224 (repeatable); an open batch is 1 "
        "without it.",
    ),
) -> None:
    """Compile an ONNX model with TVM for a target and verify it against ONNX Runtime."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edgecam.compiler.build import STEPS, compile_model
    from edgecam.compiler.errors import CompilerError
    from edgecam.compiler.frontends.open_dims import parse_input_shapes

    console = Console(stderr=True)
    try:
        input_shapes = parse_input_shapes(input_shape or [])
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    options: dict[str, object] = {"mcpu": mcpu} if mcpu else {}
    if mattr:
        options["mattr"] = mattr
    if arch:
        options["arch"] = arch
    if not channels_last:
        options["channels_last"] = False
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=len(STEPS))

        def on_step(step: str) -> None:
            progress.update(
                task,
                description=f"{step} ({STEPS.index(step) + 1}/{len(STEPS)})",
                completed=STEPS.index(step),
            )

        try:
            artifact = compile_model(
                model,
                target,
                out,
                target_options=options,
                tolerance=tolerance,
                samples=samples,
                on_step=on_step,
                sign_key=_signing_key(sign_key),
                input_shapes=input_shapes,
            )
        except (
            CompilerError,
            OSError,
            ValueError,
        ) as exc:  # ValueError: a bad --sign-key  # OSError: the output directory cannot be written
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
    m = artifact.manifest
    size = sum((artifact.path / name).stat().st_size for name in m.files)
    check = (
        _verification_line(m.verification)
        if m.verification
        else "not verified (this host cannot run the target)"
    )
    code = m.target.device_code or m.target.tvm.get("mcpu", "")  # cubin sm_87, or the CPU tuned for
    console.print(f"[green]✓[/] {m.model_name} for {m.target.name} ({code}) → {artifact.path}")
    console.print(f"  {size / 1024:.0f} KiB, built in {m.measurements['build_seconds']:.1f} s; {check}")
    records = int(m.measurements.get("tuning_records", 0))
    tuned, tasks = int(m.measurements.get("tuned_tasks", 0)), int(m.measurements.get("tuning_tasks", 0))
    console.print(
        f"  tuned: schedules for {tuned} of {tasks} tasks replayed from a database of {records} records"
        if records
        else "  untuned: no tuning database (edgecam tune)"
    )
    if m.target.cpu_features:
        console.print(f"  needs CPU features: {' '.join(m.target.cpu_features)}")
    if sign_key:
        console.print(f"  signed with {sign_key}")


def _signing_key(path: Path | None) -> Any:
    from edgecam.signing import load_private_key

    return load_private_key(path) if path is not None else None


@app.command("keygen")
def keygen_command(
    out: Path = typer.Argument(..., help="Private key file to write (PEM); the public key goes to OUT.pub."),
) -> None:
    """Make an Ed25519 key pair for signing artifacts; cameras trust the .pub file (trusted_keys)."""
    from rich.console import Console

    from edgecam.signing import generate_key_pair

    console = Console(stderr=True)
    with _compiler_errors(console):
        kid = generate_key_pair(out, out.with_name(out.name + ".pub"))
    console.print(f"[green]✓[/] key {kid}: private {out} (keep it secret), public {out}.pub")


@app.command("sign")
def sign_command(
    artifact_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="The artifact directory."),
    sign_key: Path = typer.Option(..., "--sign-key", help=_SIGN_HELP),
) -> None:
    """Sign an existing artifact (after its files are verified): e.g. re-sign with a new key."""
    from rich.console import Console

    from edgecam.compiler.artifact import MANIFEST_NAME, load_artifact
    from edgecam.signing import sign_manifest

    console = Console(stderr=True)
    with _compiler_errors(console):
        load_artifact(artifact_dir, check_host=False)  # sign only what the manifest truly describes
        kid = sign_manifest(artifact_dir / MANIFEST_NAME, _signing_key(sign_key))
    console.print(f"[green]✓[/] {artifact_dir} signed with key {kid}")


@app.command("tune")
def tune_command(
    model: Path = typer.Argument(..., exists=True, dir_okay=False, help="The ONNX model."),
    target: str = typer.Option(..., "--target", "-t", help="Target name, e.g. x86_64."),
    trials: int = typer.Option(
        1000,
        "--trials",
        min=1,
        help="Measured trials the database should hold in all (a rerun adds the rest).",
    ),
    trials_per_task: int = typer.Option(None, "--trials-per-task", min=1, help="Cap per tuning task."),
    mcpu: str = typer.Option(None, help="CPU to tune for (LLVM name); default: this host's CPU."),
    mattr: list[str] = typer.Option(None, help="LLVM feature to add/remove, as for compile (repeatable)."),
    num_cores: int = typer.Option(None, "--num-cores", min=1, help="Threads the camera runs with."),
    db: Path = typer.Option(None, "--db", help="Database root; default: $EDGECAM_TUNING_DIR or ~/.cache."),
    rpc_tracker: str = typer.Option(None, help="HOST:PORT of an RPC tracker: measure on a remote board."),
    rpc_key: str = typer.Option(None, help="The board's key at the tracker (with --rpc-tracker)."),
    best_only: bool = typer.Option(
        False, "--best-only", help="Afterwards keep only each task's best record (to commit a database)."
    ),
) -> None:
    """Tune a model for a target with MetaSchedule; `compile` then reuses the database automatically."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from edgecam.compiler import tuning
    from edgecam.compiler.artifact import sha256_file
    from edgecam.compiler.errors import CompilerError, InvalidOptionError
    from edgecam.compiler.frontends.onnx import load_onnx, to_relax
    from edgecam.compiler.targets import create_target

    console = Console(stderr=True)
    options: dict[str, object] = {"mcpu": mcpu} if mcpu else {}
    if mattr:
        options["mattr"] = mattr
    if num_cores:
        options["num_cores"] = num_cores
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} trials"),
    )
    try:
        if (rpc_tracker is None) != (rpc_key is None):
            raise InvalidOptionError("--rpc-tracker and --rpc-key go together")
        runner = tuning.rpc_runner(rpc_tracker, rpc_key) if rpc_tracker else "local"
        builder = create_target(target, **options)
        loaded = load_onnx(model)
        tvm_target = builder.tvm_target()
        sha = sha256_file(loaded.path)
        database = tuning.database_dir(sha, tvm_target, db)
        if seeded := tuning.seed_from_bundled(sha, tvm_target, database):
            console.print(f"starting from the {seeded} records shipped for this model")
        held = tuning.records_in(database)
        console.print(f"database {database} holds {held} trials; budget {trials}")
        with Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
            bar = progress.add_task("tuning", total=max(trials - held, 0))

            def on_progress(done: int, planned: int, seconds: float) -> None:
                progress.update(bar, completed=done, total=planned)
                if not console.is_terminal:  # a log file gets no live bar: one line per measured batch
                    eta = tuning.eta_seconds(done, planned, seconds)
                    eta_text = f", ETA {eta / 60:.1f} min" if eta is not None else ""
                    console.print(f"tuning: {done}/{planned} trials in {seconds / 60:.1f} min{eta_text}")

            result = tuning.tune(
                # prepare: the module `compile` builds (int8 layers folded), so its workloads match.
                builder.prepare(to_relax(loaded)),
                tvm_target,
                database,
                trials,
                trials_per_task,
                runner,
                on_progress,
            )
        if best_only:
            before, after = tuning.keep_best(database)
            console.print(f"kept the best of each task: {after} of {before} records")
    except tuning.TuningInterrupted as exc:
        console.print(f"[yellow]{exc}[/]")
        raise typer.Exit(130) from None
    except (CompilerError, OSError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(
        f"[green]✓[/] {result.tasks} tasks, {result.trials_run} trials measured in {result.seconds:.0f} s; "
        f"{tuning.records_in(result.database)} in {result.database}"
    )
    env = f"{tuning.ENV_ROOT}={db} " if db else ""
    flags = "".join(
        f" --{name}={value}"
        for name, value in (("mcpu", mcpu), *(("mattr", m) for m in mattr or ()))
        if value
    )
    console.print(
        f"  `{env}edgecam compile {model} -t {target}{flags} -o OUT` now builds with these schedules"
    )


_RUNS = typer.Option(
    50, "--runs", min=1, help="Timed batch-1 inferences per step and engine (after warm-up)."
)
_TVM_LATENCY = typer.Option(
    True, "--tvm-latency/--no-tvm-latency", help="Build every step with TVM (untuned) and time it too."
)


@app.command("compress")
def compress_command(
    model: Path | None = typer.Argument(
        None, exists=True, dir_okay=False, help="The ONNX model; default: the recipe's `model`."
    ),
    recipe: Path = typer.Option(
        ..., "--recipe", "-r", exists=True, dir_okay=False, help="Recipe (YAML/JSON)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write (replaced atomically)."),
    runs: int = _RUNS,
    tvm_latency: bool = _TVM_LATENCY,
    sign_key: Path = typer.Option(None, "--sign-key", help=_SIGN_HELP),
) -> None:
    """Compress a model with a recipe, measure every step, gate on accuracy, compile the result."""
    from rich.console import Console

    from edgecam.compiler.compress import GateFailure, compress
    from edgecam.compiler.evaluate import MeasureOptions
    from edgecam.compiler.report import table

    console, errors = _stdout_console(), Console(stderr=True)
    with _compiler_errors(errors):
        (loaded, path), base_dir = _recipe_and_model(recipe, model)
        options = MeasureOptions(runs=runs, tvm=tvm_latency)
        try:
            with _progress(errors) as on_progress:
                key = _signing_key(sign_key)
                artifact, report = compress(path, loaded, base_dir, out, on_progress, options, key)
        except GateFailure as exc:
            console.print(table(exc.report))
            raise
    console.print(table(report))
    errors.print(
        f"[green]✓[/] {artifact.manifest.model_name} for {artifact.manifest.target.name} → {artifact.path}"
    )


@app.command("report")
def report_command(
    path: Path = typer.Argument(
        ...,
        exists=True,
        help="An artifact directory (shows its stored report) or an ONNX model (measures it).",
    ),
    recipe: Path | None = typer.Option(
        None,
        "--recipe",
        "-r",
        exists=True,
        dir_okay=False,
        help="Recipe to measure MODEL with (required for a model).",
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON here."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also write the accuracy/size/latency plot (PNG) here."
    ),
    runs: int = _RUNS,
    tvm_latency: bool = _TVM_LATENCY,
) -> None:
    """Show an artifact's compression report, or measure a model with a recipe without writing an artifact."""
    from rich.console import Console

    from edgecam.compiler.compress import measure_recipe
    from edgecam.compiler.errors import RecipeError
    from edgecam.compiler.evaluate import MeasureOptions
    from edgecam.compiler.report import table, write_json, write_plot

    console, errors = _stdout_console(), Console(stderr=True)
    with _compiler_errors(errors):
        if path.is_dir():
            report = _stored_report(path)
        elif recipe is None:
            raise RecipeError(
                f"{path} is a model: pass --recipe to measure it (or give an artifact directory)"
            )
        else:
            (loaded, model), base_dir = _recipe_and_model(recipe, path)
            with _progress(errors) as on_progress:
                options = MeasureOptions(runs=runs, tvm=tvm_latency)
                report = measure_recipe(model, loaded, base_dir, on_progress, options).report
        console.print(table(report))
        for target, write in ((json_path, write_json), (plot, write_plot)):
            if target is not None:
                errors.print(f"wrote {write(report, target)}")


def _recipe_and_model(recipe_path: Path, model: Path | None) -> tuple[tuple[Any, Path], Path]:
    """The recipe, the model to compress (the argument, else the recipe's `model`) and the recipe's dir."""
    from edgecam.compiler.errors import RecipeError
    from edgecam.compiler.recipe import load_recipe

    recipe, base_dir = load_recipe(recipe_path)
    if model is None:
        if recipe.model is None:
            raise RecipeError(f"no model: give MODEL or set `model:` in {recipe_path}")
        model = recipe.model if recipe.model.is_absolute() else base_dir / recipe.model
    return (recipe, model), base_dir


def _stored_report(artifact_dir: Path) -> Any:
    """An artifact's report.json, after the artifact's hashes check out (any host may read it)."""
    from edgecam.compiler.artifact import load_artifact
    from edgecam.compiler.errors import CompilerError
    from edgecam.compiler.report import REPORT_JSON, load_report

    artifact = load_artifact(artifact_dir, check_host=False)
    if REPORT_JSON not in artifact.manifest.files:
        raise CompilerError(
            f"{artifact_dir} has no {REPORT_JSON}: it was made by `edgecam compile`, not `edgecam compress`"
        )
    return load_report(artifact_dir / REPORT_JSON)


def _stdout_console() -> Any:
    from rich.console import Console

    console = Console()
    # Piped or captured output has no width of its own (rich assumes 80); the table needs ~150.
    return console if console.is_terminal else Console(width=160)


@contextlib.contextmanager
def _compiler_errors(console: Any) -> Iterator[None]:
    """CompilerError, ArtifactError and OSError → a red message and exit status 2, no traceback."""
    from rich.markup import escape

    from edgecam.compiler.artifact import ArtifactError
    from edgecam.compiler.errors import CompilerError
    from edgecam.signing import SignatureError

    try:
        yield
    except (CompilerError, ArtifactError, OSError, SignatureError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)  # no breaks inside paths
        raise typer.Exit(2) from None


@contextlib.contextmanager
def _progress(console: Any) -> Iterator[Callable[[str, int, int], None]]:
    """A transient progress bar driven by (message, stages done, stages in all) callbacks; where the
    console is no terminal (a log file, CI), which shows no live bar, one line per new message instead."""
    import time

    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    started, last = time.monotonic(), [""]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=None)

        def on_progress(message: str, done: int, total: int) -> None:
            progress.update(task, description=message, completed=done, total=total)
            if not console.is_terminal and message != last[0]:
                last[0] = message
                elapsed = time.monotonic() - started
                console.print(f"[{done}/{total}, {elapsed:.0f} s] {message}", markup=False, highlight=False)

        yield on_progress


def _verification_line(verification: Verification) -> str:
    """What verification compared, in one line: the worst relative difference, and the intermediate
    tensors compared when the outputs did not depend on the inputs."""
    worst = max((c.value for c in verification.compared), default=None)
    relative = f" ({worst:.1e} of the output's scale)" if worst is not None else ""
    inner = [c.tensor for c in verification.compared if c.kind == "intermediate"]
    more = f"; outputs constant over the inputs, so also {len(inner)} intermediate tensor(s)" if inner else ""
    where = "" if verification.runner == "native" else f" ({verification.runner})"
    return (
        f"max |TVM - ONNX Runtime| = {verification.max_abs_diff:.2e}{relative} over "
        f"{verification.samples} inputs{where}{more}"
    )
