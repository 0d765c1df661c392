"""CLI commands for workflows: `latentlm run`, `latentlm workflow validate`, `latentlm workflows`.

`cli/main.py` adds them with `register(cli)`. Heavy imports (torch, the model) happen inside the
commands, and `validate` and `--dry-run` never load a model.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from latentlm.cli.icl_options import ICL_MODES, ICLChoice, icl_options, icl_session
from latentlm.cli.verify_option import NO_VERIFY
from latentlm.errors import LatentLMError

WORKFLOW_SUFFIXES = (".yaml", ".yml")


# ---- latentlm run -------------------------------------------------------------------------------------
@click.command("run")
@click.argument("target", required=False, metavar="FILE.yaml|EXAMPLE|REQUEST")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Give a workflow file's input, typed by its declared type (repeatable).")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Workflow file: the output folder (default outputs/<name>-<YYYYmmdd-HHMMSS>). "
                   "Request: the PNG for its picture (or a folder for Result.save).")
@click.option("--model", default="shapes-tiny", show_default=True, help="Shipped name, checkpoint folder or hub id.")
@click.option("--speech-model", default=None,
              help="A second model for the speech steps (a speech specialist); --model draws and reads.")
@NO_VERIFY
@click.option("--list", "list_examples", is_flag=True, help="List the shipped example workflow files and exit.")
@click.option("--dry-run", is_flag=True, help="Check and print the plan as JSON without loading the model.")
@click.option("--image", default=None, help="Request only: the picture it is about.")
@click.option("--seed", type=int, default=None, help="Request only (a workflow file sets its own seeds).")
@click.option("--strict", is_flag=True, help="Refuse (exit 2) words or forms the model was not trained on, instead "
                                             "of running with a warning (a file: in literals and inputs).")
@click.option("--json", "as_json", is_flag=True, help="Request only: print the Result as JSON (Result.to_dict()).")
@icl_options
def run_cmd(target: str | None, sets: tuple[str, ...], out: Path | None, model: str, speech_model: str | None,
            list_examples: bool, dry_run: bool, image: str | None, seed: int | None, strict: bool, as_json: bool,
            icl: ICLChoice) -> None:
    """Run a workflow file, a shipped example, or a free-text request.

    \b
    A TARGET ending in .yaml/.yml, or naming an existing file, is a workflow file: it is checked
    in full first (all problems, as FILE:LINE:COL: where: what), then run with one model load.
    Its outputs (pictures as PNG, text as .txt) and manifest.json go to -o DIR, by default
    outputs/<name>-<YYYYmmdd-HHMMSS> under the current folder. The name of a shipped example
    (see --list) runs that example. Anything else is a request, planned and run by Session.run:
    one or more steps ("draw a red circle and describe it"), each step's seed derived from --seed.
    Words or forms the model was not trained on print a warning on stderr (--strict: exit 2).

    \b
    Example:
      latentlm run --list
      latentlm run draw-and-describe -o out/dd
      latentlm run flow.yaml --set prompt="a blue square" --set seed=4
      latentlm run "draw a red circle" -o circle.png
      latentlm run "draw a red circle" --dry-run
      latentlm run "draw a red circle and describe it" -o out/ --json
      latentlm run "what colour is the circle?" --image scene.png --icl auto
      latentlm run "describe it and say it" --image scene.png --speech-model runs/speech-tiny-nlr/final -o out/
    """
    if list_examples:
        if target is not None:
            raise click.UsageError("--list takes no FILE or request")
        _list_examples()
        return
    if target is None:
        raise click.UsageError("give a workflow FILE.yaml, an example name (see --list) or a request in quotes")
    path = workflow_path(target)
    if path is not None:
        if as_json:
            raise click.UsageError("--json is for requests; a workflow file writes manifest.json")
        _run_file(path, sets, out, model, dry_run, image, seed, icl, strict, speech_model)
    else:
        _run_request(target, sets, out, model, dry_run, image, seed, strict, as_json, icl, speech_model)


def workflow_path(target: str) -> Path | None:
    """The workflow file `target` names (a .yaml/.yml path, an existing file, a shipped example), else None."""
    from latentlm.workflows.workflow_file import example_files

    if target.lower().endswith(WORKFLOW_SUFFIXES) or Path(target).is_file():
        return Path(target)
    return example_files().get(target)


def _list_examples() -> None:
    from latentlm.workflows.workflow_file import check_workflow_file, example_files

    rows = []
    for stem, path in example_files().items():
        wf, errors = check_workflow_file(path)
        rows.append((wf.name if wf else stem, wf.summary if wf else f"(invalid: {len(errors)} problem(s))"))
    width = max((len(n) for n, _ in rows), default=0)
    for name, summary in rows:
        click.echo(f"{name.ljust(width)}  {summary}")


def _run_file(path: Path, sets, out, model, dry_run, image, seed, icl: ICLChoice | None = None,
              strict: bool = False, speech_model: str | None = None) -> None:
    from latentlm.cli.outputs import echo_warnings
    from latentlm.workflows.workflow_file import load_workflow_file
    from latentlm.workflows.workflow_runner import parse_sets, resolve_inputs, run_workflow

    if image is not None or seed is not None:
        raise click.UsageError("--image and --seed are for requests; a workflow file takes its inputs with "
                               "--set KEY=VALUE (e.g. --set seed=4)")
    wf = load_workflow_file(path)
    icl = icl or ICLChoice(None)
    icl.session_kwargs()  # a bad --icl combination fails before any model work
    if dry_run:
        _, recorded = resolve_inputs(wf, parse_sets(sets))
        shown = {"file": str(path), **wf.to_dict(), "values": recorded}
        if icl.mode is not None:
            shown["prompting"] = ICL_MODES[icl.mode]  # --icl overrides the file's
        click.echo(json.dumps(shown, indent=2, default=str))
        return
    session = icl_session(model, icl, speech_model=speech_model) if icl.mode is not None else None
    outcome = run_workflow(wf, model=model, out=out, sets=sets, session=session,
                           prompting=ICL_MODES[icl.mode] if icl.mode is not None else None, strict=strict,
                           speech_model=speech_model)
    echo_warnings(outcome)
    for name, record in outcome.manifest["outputs"].items():
        shown = str(outcome.out_dir / record["file"]) if "file" in record else json.dumps(record["value"])
        click.echo(f"{name}: {shown}")
    click.echo(str(outcome.manifest_path))


def _run_request(request: str, sets, out, model, dry_run, image, seed, strict=False, as_json=False,
                 icl: ICLChoice | None = None, speech_model: str | None = None) -> None:
    """A free-text request: `Session.plan` and its check for --dry-run (no model), else `Session.run`."""
    from latentlm.audio_io import AUDIO_FORMATS, check_audio_path, save_audio
    from latentlm.cli.outputs import check_picture_path, check_writable_dir, echo_warnings, save_picture
    from latentlm.workflows.result import Result
    from latentlm.workflows.session import check_seed

    if sets:
        raise click.UsageError(f"--set is for workflow files; {request!r} is not one (a .yaml file, an existing "
                               "file or a shipped example)")
    if seed is not None:
        check_seed(seed, "--seed")
    if image is not None:
        from latentlm.images import load_image

        load_image(image)  # a missing picture fails before the model loads
    session = icl_session(model, icl, strict, speech_model)
    plan = session.plan(request, image)
    notes = session.vet(plan.steps)  # --strict refuses here, before any model work
    if dry_run:
        echo_warnings(Result(warnings=notes))
        click.echo(json.dumps(plan.to_dict(), indent=2))
        return
    workflows = {step.workflow for step in plan.steps}
    if out is None and workflows & {"text-to-image", "text-to-speech"}:
        raise LatentLMError("this request makes a picture or a sound: give -o FILE.png / FILE.wav (or a folder) "
                            "to save it")
    sound_file = out is not None and out.suffix.lower() in AUDIO_FORMATS
    picture_file = out is not None and out.suffix != "" and not sound_file  # a file name; else a folder
    if picture_file:
        check_picture_path(out)
    elif sound_file:
        check_audio_path(out)
        check_writable_dir(out.parent, shown=out)
    elif out is not None:
        check_writable_dir(out)
    result = session.run(request, image=image, seed=seed)
    echo_warnings(result)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    elif result.text is not None:
        click.echo(result.text)
    if picture_file and result.image is not None:
        click.echo(str(save_picture(result.image, out)))
    elif sound_file and result.audio is not None:
        click.echo(str(save_audio(result.audio, result.sample_rate, out)))
    elif out is not None and not picture_file and not sound_file:
        click.echo(str(result.save(out)))


# ---- latentlm workflow validate ---------------------------------------------------------------------------
@click.group("workflow")
def workflow_group() -> None:
    """Check workflow files: YAML lists of workflow calls whose outputs feed later calls.

    \b
    Example:
      latentlm workflow validate flow.yaml
    """


@workflow_group.command("validate")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
def validate_cmd(files: tuple[str, ...]) -> None:
    """Check workflow files without loading a model.

    \b
    A good file prints 'FILE: ok (...)'. Each problem of a bad file goes to stderr on its own
    line as FILE:LINE:COL: where: what (1-based line and column; all problems, not only the
    first), and the exit code is 2. Unlike other commands' errors, these lines are not joined
    into one 'error:' line, so editors and CI can jump to each.

    \b
    Example:
      latentlm workflow validate flow.yaml
      latentlm workflow validate a.yaml b.yml
    """
    from latentlm.workflows.workflow_file import check_workflow_file

    failed = False
    for file in files:
        wf, errors = check_workflow_file(file)
        if errors or wf is None:
            failed = True
            for e in errors:
                click.echo(e.format(file), err=True)
            continue
        steps = ", ".join(f"{s.id}: {s.uses}" for s in wf.steps)
        click.echo(f"{file}: ok ({wf.name}; {len(wf.steps)} step{'s' * (len(wf.steps) != 1)}: {steps})")
    if failed:
        sys.exit(2)


# ---- latentlm workflows -----------------------------------------------------------------------------------
@click.command("workflows")
def workflows_cmd() -> None:
    """List the registered workflows: inputs (with defaults) -> outputs, and what each does.

    \b
    Use them as a workflow file's `uses:`, or one at a time from Python (Session.call).
    Example:
      latentlm workflows
    """
    from latentlm.workflows import builtin  # noqa: F401 - registers the built-in workflows
    from latentlm.workflows.registry import REGISTRY

    for name in sorted(REGISTRY):
        w = REGISTRY[name]
        click.echo(f"{w.signature()} -> {', '.join(w.Outputs.model_fields)}")
        click.echo(f"    {w.description}")


def register(cli: click.Group) -> None:
    """Add `run`, `workflow` (validate) and `workflows` to the `latentlm` group."""
    for command in (run_cmd, workflow_group, workflows_cmd):
        cli.add_command(command)
