"""Run the UltraAD deploy app: ``python deploy_app -i <dicom dir> -o <out dir> -m <model dir or checkpoint>``.

Without -i/-o/-m the paths come from HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH / HOLOSCAN_MODEL_PATH, as in a MAP.
Extra options (removed before the SDK parses the rest): ``--frame-step N`` (score every N-th frame of a cine loop),
``--max-frames N``, ``--allow-random-init`` (accept a checkpoint trained on a random backbone; every output says so),
``--deterministic-uids SEED`` (reproducible UIDs, for tests), ``--refuse-flagged`` (do not analyse an image the input
gate flags: colour Doppler / elastography overlay, calliper marks; the reason goes into ultraad_run.json). Environment
equivalents: ULTRAAD_FRAME_STEP, ULTRAAD_MAX_FRAMES, ULTRAAD_ALLOW_RANDOM_INIT=1, ULTRAAD_DETERMINISTIC_UIDS,
ULTRAAD_REFUSE_FLAGGED=1.

Exit code: 0 every ultrasound image was processed; 1 some file could not be processed (see ultraad_run.json in the
output folder); 2 nothing could be processed.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import AppOptions, UltraADApp

from monai_ultraad.io_utils import atomic_write_json


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
    try:
        app.run()
    except Exception as exc:  # the model or the output folder is unusable: nothing more can be done
        logging.getLogger("ultraad.deploy").error("run aborted: %s", exc)
        print(f"ultraad deploy app: run aborted: {exc}", file=sys.stderr)
        app.run_report.failed.append({"file": "-", "reason": f"run aborted: {exc}"})
    summary = app.run_report.to_dict()
    for failure in summary["failed"]:
        print(f"ultraad deploy app: failed {failure['file']}: {failure['reason']}", file=sys.stderr)
    if app.output_folder is not None:
        atomic_write_json(app.output_folder / "ultraad_run.json", summary)
    print(json.dumps({k: (v if k == "exit_code" else len(v)) for k, v in summary.items()}))
    return app.run_report.exit_code


if __name__ == "__main__":
    sys.exit(main())
