"""Last step: a source's staged objects become visible together (renamed into the output folder), or none do."""

from __future__ import annotations

import logging

from monai.deploy.core import Fragment, Operator, OperatorSpec

from .output_folder import OutputFolder
from .run_report import RunReport
from .source_work import SourceWork
from .study_loader import InFlight

logger = logging.getLogger("ultraad.deploy")


class PublisherOperator(Operator):
    """Publishes every object a source's writers staged (whatever their number and kind), or, when any step failed,
    removes them all; records the source's one outcome in the run report and lets the loader start the next."""

    def __init__(self, fragment: Fragment, *args, output: OutputFolder, report: RunReport, in_flight: InFlight,
                 **kwargs) -> None:
        self.output, self.report, self.in_flight = output, report, in_flight
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("source")

    def compute(self, op_input, op_output, context) -> None:
        work: SourceWork = op_input.receive("source")
        try:
            for warning in work.warnings:
                self.report.warn(work.path, warning)
            if work.quality is not None:
                self.report.quality(work.path, work.quality)
            if work.ok and not work.objects:
                work.fail("no output was written")
            if work.ok:
                try:
                    published = self.output.publish(work.staging, work.objects.values())
                except OSError as exc:
                    work.fail(f"outputs not published: {exc.strerror or exc}")
                else:
                    self.report.done(work.path, published, work.records)
                    logger.info("published %d object(s) of %s", len(published), work.name)
            if not work.ok:
                if work.staging is not None:
                    self.output.discard(work.staging)
                if work.outcome == "skipped":
                    self.report.skip(work.path, work.reason)
                elif work.outcome == "refused":
                    self.report.refuse(work.path, work.reason)
                else:
                    self.report.fail(work.path, work.reason)
        finally:
            work.release()
            self.in_flight.count -= 1
