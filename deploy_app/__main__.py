"""Run the UltraAD deploy app: ``python deploy_app -i <dicom dir> -o <out dir> -m <model dir or checkpoint>``.

Without -i/-o/-m the paths come from HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH / HOLOSCAN_MODEL_PATH, as in a MAP.
Extra options (removed before the SDK parses the rest): ``--frame-step N`` (score every N-th frame of a cine loop),
``--max-frames N``, ``--allow-random-init`` (accept a checkpoint trained on a random backbone; every output says so),
``--deterministic-uids SEED`` (reproducible UIDs, for tests), ``--refuse-flagged`` (do not analyse an image the input
gate flags: colour Doppler / elastography overlay, calliper marks; the reason goes into ultraad_run.json). Environment
equivalents: ULTRAAD_FRAME_STEP, ULTRAAD_MAX_FRAMES, ULTRAAD_ALLOW_RANDOM_INIT=1, ULTRAAD_DETERMINISTIC_UIDS,
ULTRAAD_REFUSE_FLAGGED=1.

Exit code: 0 every ultrasound image was processed; 1 some image failed or was not started (SIGTERM/SIGINT; see
ultraad_run.json in the output folder); 2 nothing was processed (no image, bad model path, output folder not usable
or held by another run). The summary is printed on stdout in every case, also when the report cannot be written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from operators import shutdown

if __name__ == "__main__":
    shutdown.install()  # SIGTERM / SIGINT: finish the source under way, then stop with a report

from app import AppOptions, UltraADApp


def split_options(argv: list[str]) -> tuple[AppOptions, list[str]]:
    """Take this app's own options out of ``argv``; the SDK's parser rejects unknown arguments."""
    env = os.environ
    opts = AppOptions(
        frame_step=int(env.get("ULTRAAD_FRAME_STEP", 1)),
        max_frames=int(env["ULTRAAD_MAX_FRAMES"]) if env.get("ULTRAAD_MAX_FRAMES") else None,
        allow_random_init=env.get("ULTRAAD_ALLOW_RANDOM_INIT", "").lower() in ("1", "true", "yes"),
        deterministic_uids=env.get("ULTRAAD_DETERMINISTIC_UIDS") or None,
        refuse_flagged=env.get("ULTRAAD_REFUSE_FLAGGED", "").lower() in ("1", "true", "yes"),
    )
    rest: list[str] = [argv[0]]
    args = iter(argv[1:])
    for arg in args:
        if arg == "--frame-step":
            opts.frame_step = int(next(args))
        elif arg == "--max-frames":
            opts.max_frames = int(next(args))
        elif arg == "--allow-random-init":
            opts.allow_random_init = True
        elif arg == "--deterministic-uids":
            opts.deterministic_uids = next(args)
        elif arg == "--refuse-flagged":
            opts.refuse_flagged = True
        else:
            rest.append(arg)
    return opts, rest


def main(argv: list[str] | None = None) -> int:
    try:
        options, sdk_argv = split_options(list(sys.argv if argv is None else argv))
    except (ValueError, StopIteration):
        print("ultraad deploy app: --frame-step / --max-frames need an integer, --deterministic-uids a seed",
              file=sys.stderr)
        return 2
    sys.argv = sdk_argv
    app = UltraADApp(options=options)
    report = app.run_report
    try:
        app.run()
    except Exception as exc:  # noqa: BLE001 - the model, the input or the output folder is unusable: nothing more
        logging.getLogger("ultraad.deploy").error("run aborted: %s", exc)
        print(f"ultraad deploy app: run aborted: {exc}", file=sys.stderr)
        report.aborted = str(exc)
    summary = report.to_dict()
    for failure in summary["failed"]:
        print(f"ultraad deploy app: failed {failure['file']}: {failure['reason']}", file=sys.stderr)
    if report.not_started:
        print(f"ultraad deploy app: stopped by {report.stopped_by}: {len(report.not_started)} file(s) not started",
              file=sys.stderr)
    if app.output is not None:  # this run holds the folder: its report goes there (never raises)
        problem = app.output.write_report(summary)
        app.output.close()
        if problem:
            print(f"ultraad deploy app: run report not written: {problem}", file=sys.stderr)
    else:  # the folder is another run's, or unusable: its report (if any) is left alone
        print("ultraad deploy app: no run report written (the output folder was not usable)", file=sys.stderr)
    counts = {k: (v if not isinstance(v, (list, dict)) else len(v)) for k, v in summary.items()}
    print(json.dumps(counts), flush=True)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
