"""`edgecam compile`: the compiler's commands. Mounted by edgecam/cli.py; tvm/onnx load only when run."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("compile")
def compile_command(
    model: Path = typer.Argument(..., exists=True, dir_okay=False, help="The ONNX model."),
    target: str = typer.Option(..., "--target", "-t", help="Target name, e.g. x86_64."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact directory to write (replaced atomically)."),
    mcpu: str = typer.Option(None, help="CPU to tune code for (LLVM name); default: this build host's CPU."),
    mattr: list[str] = typer.Option(
        None, help="LLVM feature to add/remove, e.g. --mattr=-avx512f (repeatable); for the camera fleet."
    ),
    tolerance: float = typer.Option(1e-4, help="Largest |TVM - ONNX Runtime| output difference accepted."),
    samples: int = typer.Option(8, min=1, help="Inputs compared against ONNX Runtime."),
) -> None:
    """Compile an ONNX model with TVM for a target and verify it against ONNX Runtime."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edgecam.compiler.build import STEPS, compile_model
    from edgecam.compiler.errors import CompilerError

    console = Console(stderr=True)
    options: dict[str, object] = {"mcpu": mcpu} if mcpu else {}
    if mattr:
        options["mattr"] = mattr
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
            )
        except (CompilerError, OSError) as exc:  # OSError: the output directory cannot be written
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
    m = artifact.manifest
    size = sum((artifact.path / name).stat().st_size for name in m.files)
    check = (
        f"max |TVM - ONNX Runtime| = {m.verification.max_abs_diff:.2e} over {m.verification.samples} inputs"
        if m.verification
        else "not verified (this host cannot run the target)"
    )
    console.print(
        f"[green]✓[/] {m.model_name} for {m.target.name} ({m.target.tvm.get('mcpu', '')}) → {artifact.path}"
    )
    console.print(f"  {size / 1024:.0f} KiB, built in {m.measurements['build_seconds']:.1f} s; {check}")
    if m.target.cpu_features:
        console.print(f"  needs CPU features: {' '.join(m.target.cpu_features)}")
