"""What every engine-backed algorithm shares: prompt and sampling parameters, the job's life cycle.

A subclass names its engine TASK and defines `add_inputs()` and `add_outputs()` (its own
parameters), `prepare(parameters, context, feedback, folder) -> (params, [(slot, path)])` (the
task's params beyond prompt and sampling, and its input files) and `deliver(client, job,
parameters, context, feedback, folder, written) -> results` (downloads into the destinations,
listing each file written in `written`). The base class
checks the engine (reachable, API v1, runs the task, has the model), submits the job, mirrors its
progress into the feedback, cancels it on the engine when the user cancels, and removes outputs
written by a run that did not finish.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import tempfile

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterDateTime,
    QgsProcessingParameterEnum,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)
from qgis.PyQt.QtCore import QCoreApplication

from .compat import CRS_WKT_PREFERRED, DATETIME_DATE, FLAG_ADVANCED, NUMBER_DOUBLE, NUMBER_INTEGER
from .engine_client import MENU, EngineClient, EngineError, EngineUnreachable, JobCancelled
from .model_catalog import CATALOG
from .multipart import total_size
from .outputs import place_raster
from .settings import load_settings

SCHEDULERS = ["ddim", "dpm++", "euler", "pndm", "unipc"]
MAX_SEED = 2**31 - 1  # Processing integers are 32-bit
DOCS_URL = "https://github.com/gfm4d/gfm4d/blob/main/docs/qgis.md"  # metadata.txt's homepage


def advanced(parameter):
    parameter.setFlags(parameter.flags() | FLAG_ADVANCED)
    return parameter


def explained(parameter, text: str):
    """A parameter with its explanation as help: short labels keep dialogs and batch tables narrow."""
    parameter.setHelp(text)
    return parameter


def crs_for_engine(crs) -> str:
    """A CRS as the engine reads it: its EPSG/ESRI code when it has one, its WKT otherwise."""
    authid = crs.authid()
    if authid.split(":")[0].upper() in ("EPSG", "ESRI"):
        return authid
    return crs.toWkt(CRS_WKT_PREFERRED)


def is_unset(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def help_html(intro: str, definitions) -> str:
    """An algorithm's help: its introduction, then each parameter that has an explanation."""
    items = "".join(f"<dt><b>{html.escape(d.description(), False)}</b></dt><dd>{html.escape(d.help(), False)}</dd>"
                    for d in definitions if d.help())
    paragraphs = "".join(f"<p>{html.escape(part, False)}</p>" for part in intro.split("\n\n") if part.strip())
    return paragraphs + (f"<dl>{items}</dl>" if items else "")


class Gfm4dAlgorithm(QgsProcessingAlgorithm):
    """What every GFM4D algorithm shares: translation, search tags, help text and the Help button's page.

    A subclass sets INTRO (what it does, in prose), TAGS (comma-separated words the toolbox search
    finds it by) and HELP_ANCHOR (its section in docs/qgis.md); parameter explanations live in each
    parameter's help and are listed under the introduction.
    """

    INTRO = ""
    TAGS = ""
    HELP_ANCHOR = ""

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("GFM4D", text)

    def createInstance(self):
        return type(self)()

    def tags(self) -> list:
        return [tag.strip() for tag in self.tr(self.TAGS).split(",") if tag.strip()]

    def helpUrl(self) -> str:
        return f"{DOCS_URL}#{self.HELP_ANCHOR}"

    def shortHelpString(self) -> str:
        return help_html(self.tr(self.INTRO), self.parameterDefinitions())


class EngineAlgorithm(Gfm4dAlgorithm):
    """Base of the algorithms that run an engine task."""

    TASK = ""
    PROMPT = "PROMPT"
    NEGATIVE_PROMPT = "NEGATIVE_PROMPT"
    MODEL = "MODEL"
    LORA = "LORA"
    STEPS = "STEPS"
    GUIDANCE_SCALE = "GUIDANCE_SCALE"
    SEED = "SEED"
    SCHEDULER = "SCHEDULER"
    WINDOW = "WINDOW"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    ENGINE_URL = "ENGINE_URL"
    JOB_ID = "JOB_ID"

    DEFAULT_PROMPT = ""
    PROMPT_REQUIRED = False
    DEFAULT_STEPS = 30
    DEFAULT_GUIDANCE = 7.5
    HAS_WINDOWS = True  # the task takes window / overlap

    # --- identity --------------------------------------------------------------------------------

    def group(self) -> str:
        return self.tr("Diffusion models")

    def groupId(self) -> str:
        return "diffusion"

    # --- parameters ------------------------------------------------------------------------------

    def initAlgorithm(self, config=None):
        self.add_inputs()
        self.add_prompt_and_sampling()
        self.add_outputs()
        self.addOutput(QgsProcessingOutputString(self.JOB_ID, self.tr("Engine job id")))

    def add_prompt_and_sampling(self) -> None:
        prompt_help = self.tr("Text the model is conditioned on, e.g. 'a fmow satellite image of a farm in italy'.")
        if not self.PROMPT_REQUIRED:
            prompt_help += self.tr(" Empty: the task's own prompt.")
        self.addParameter(explained(QgsProcessingParameterString(
            self.PROMPT, self.tr("Prompt"), defaultValue=self.DEFAULT_PROMPT or None, optional=not self.PROMPT_REQUIRED),
            prompt_help))
        self.addParameter(advanced(explained(QgsProcessingParameterString(
            self.NEGATIVE_PROMPT, self.tr("Negative prompt"), optional=True),
            self.tr("What the image should not look like (used with guidance above 1)."))))
        self.addParameter(self.model_parameter())
        self.addParameter(advanced(explained(QgsProcessingParameterString(
            self.LORA, self.tr("LoRAs"), optional=True),
            self.tr("LoRAs in the engine's models folder fused into the model, as NAME or NAME:WEIGHT separated by "
                    "commas (e.g. my-region-lora:0.8); Train installs them. Empty: none."))))
        self.addParameter(explained(QgsProcessingParameterNumber(
            self.STEPS, self.tr("Denoising steps"), NUMBER_INTEGER, self.DEFAULT_STEPS, False, 1, 500),
            self.tr("More steps: finer detail, proportionally longer runs.")))
        self.addParameter(explained(QgsProcessingParameterNumber(
            self.GUIDANCE_SCALE, self.tr("Guidance scale"), NUMBER_DOUBLE, self.DEFAULT_GUIDANCE, False, 0.0, 100.0),
            self.tr("How strongly the prompt steers the image; 1 or less: no guidance (twice as fast).")))
        self.addParameter(explained(QgsProcessingParameterNumber(
            self.SEED, self.tr("Seed"), NUMBER_INTEGER, 0, False, 0, MAX_SEED),
            self.tr("The same seed with the same request gives the same image; change it for another variant.")))
        self.addParameter(advanced(explained(QgsProcessingParameterEnum(
            self.SCHEDULER, self.tr("Scheduler"), SCHEDULERS, False, None, True, True),
            self.tr("Sampling method. Empty: the model's own."))))
        if self.HAS_WINDOWS:
            self.addParameter(advanced(explained(QgsProcessingParameterNumber(
                self.WINDOW, self.tr("Window size (px)"), NUMBER_INTEGER, None, True, 8, 4096),
                self.tr("Large areas are processed in windows of this many pixels and blended. Empty: the model's "
                        "native size."))))
            self.addParameter(advanced(explained(QgsProcessingParameterNumber(
                self.OVERLAP, self.tr("Window overlap (px)"), NUMBER_INTEGER, None, True, 0, 4096),
                self.tr("Pixels shared by neighbouring windows, blended across. Empty: a quarter window."))))
        self.addParameter(advanced(explained(QgsProcessingParameterNumber(
            self.BATCH_SIZE, self.tr("Batch size"), NUMBER_INTEGER, None, True, 1, 256),
            self.tr("Windows per model call. Empty: as many as the engine's free GPU memory holds (4 on a CPU)."))))
        self.addParameter(advanced(explained(QgsProcessingParameterString(
            self.ENGINE_URL, self.tr("Engine URL"), optional=True),
            self.tr("The engine to run this on, e.g. http://gpu-box:8765. Empty: the one in {0} > Settings.").format(MENU))))

    def model_parameter(self):
        """MODEL: a choice of the engine's models for this task, or free text when the engine is not reachable.

        Either way the value is the model's name (the enum uses static strings), so a graphical
        model or a batch saved with one kind of parameter runs with the other.
        """
        return self.model_choice(self.TASK, self.tr("Model"), self.tr(
            "A model of the engine that does this task (a folder in its models directory). Empty: the engine's default."))

    def model_choice(self, task: str, description: str, help_text: str):
        """MODEL as a list of the engine's models for `task`, or free text while the engine has listed none."""
        names = CATALOG.names_for(task)
        if names:
            parameter = QgsProcessingParameterEnum(self.MODEL, description, names, False, None, True, True)
        else:
            parameter = QgsProcessingParameterString(self.MODEL, description, optional=True)
        parameter.setHelp(help_text)
        return parameter

    def checkParameterValues(self, parameters, context):
        """Processing's checks, except that a model name missing from the list gets the plugin's own message,
        and LORA's entries are read before anything is sent.

        A batch or graphical model saved elsewhere may name a model that the list built when the
        toolbox loaded lacks: the engine is asked again, and the message lists what it has.
        """
        model = parameters.get(self.MODEL)
        if isinstance(model, str) and not is_unset(model):
            definition = self.parameterDefinition(self.MODEL)
            options = definition.options() if isinstance(definition, QgsProcessingParameterEnum) else None
            if options is not None and model not in options:
                problem = self.model_problem(parameters, context, model.strip(), options)
                if problem:
                    return False, problem
                parameters = {key: value for key, value in parameters.items() if key != self.MODEL}
        if self.parameterDefinition(self.LORA) is not None:
            try:
                self.loras(parameters, context)
            except QgsProcessingException as exc:
                return False, str(exc)
        return super().checkParameterValues(parameters, context)

    def model_problem(self, parameters, context, model: str, listed) -> str | None:
        """Why `model` cannot run this task on the engine in use (None: it can: the list was old)."""
        try:
            client = self.engine_client(parameters, context)
            client.require_model(self.TASK, model, timeout_s=max(load_settings().catalog_timeout_s, 5.0))
        except EngineUnreachable as exc:
            return self.tr(
                "The model {0!r} is not among the models this engine listed when the toolbox loaded ({1}), and the "
                "engine does not answer now to say whether it has it: {2}").format(model, ", ".join(listed) or "none", exc)
        except EngineError as exc:
            return str(exc)
        return None

    # --- reading parameters ------------------------------------------------------------------------

    def optional_number(self, parameters, name, context, integer=False):
        if is_unset(parameters.get(name)):
            return None
        return self.parameterAsInt(parameters, name, context) if integer else self.parameterAsDouble(parameters, name, context)

    def optional_date(self, parameters, name, context) -> str | None:
        """An ISO date (YYYY-MM-DD) or None."""
        if is_unset(parameters.get(name)):
            return None
        value = self.parameterAsDateTime(parameters, name, context)
        if not value.isValid():
            raise QgsProcessingException(self.tr("{0} is not a date: write it as YYYY-MM-DD.").format(name))
        return value.date().toString("yyyy-MM-dd")

    def optional_string(self, parameters, name, context) -> str | None:
        value = self.parameterAsString(parameters, name, context)
        return value.strip() if value and value.strip() else None

    def field_name(self, parameters, name, context) -> str | None:
        read = getattr(self, "parameterAsStrings", None) or self.parameterAsFields  # renamed in QGIS 3.40
        names = [n for n in read(parameters, name, context) if n]
        return names[0] if names else None

    def date_parameter(self, name, description, optional=True):
        return QgsProcessingParameterDateTime(name, description, DATETIME_DATE, None, optional)

    def sampling_params(self, parameters, context) -> dict:
        params = {
            "steps": self.parameterAsInt(parameters, self.STEPS, context),
            "guidance_scale": self.parameterAsDouble(parameters, self.GUIDANCE_SCALE, context),
            "seed": self.parameterAsInt(parameters, self.SEED, context),
        }
        prompt = self.optional_string(parameters, self.PROMPT, context)
        if prompt is not None:
            params["prompt"] = prompt
        elif self.PROMPT_REQUIRED:
            raise QgsProcessingException(self.tr("Give a prompt, e.g. 'a fmow satellite image of a farm in italy'."))
        optional = {
            "negative_prompt": self.optional_string(parameters, self.NEGATIVE_PROMPT, context),
            "scheduler": self.optional_string(parameters, self.SCHEDULER, context),
            "batch_size": self.optional_number(parameters, self.BATCH_SIZE, context, integer=True),
            "lora": self.loras(parameters, context),
        }
        if self.HAS_WINDOWS:
            optional["window"] = self.optional_number(parameters, self.WINDOW, context, integer=True)
            optional["overlap"] = self.optional_number(parameters, self.OVERLAP, context, integer=True)
        params.update({key: value for key, value in optional.items() if value is not None})
        return params

    def loras(self, parameters, context) -> list[dict] | None:
        """LORA as the task's `lora` list: `NAME[:WEIGHT]` entries separated by commas (None when empty)."""
        text = self.optional_string(parameters, self.LORA, context)
        if text is None:
            return None
        loras = []
        for entry in (part.strip() for part in text.split(",")):
            name, _, weight = entry.partition(":")
            try:
                scale = float(weight) if weight.strip() else 1.0
            except ValueError:
                scale = None
            if not name.strip() or scale is None or not -10 <= scale <= 10:
                raise QgsProcessingException(self.tr(
                    "LoRAs: {0!r} is not NAME or NAME:WEIGHT (a LoRA in the engine's models folder and a weight from "
                    "-10 to 10, e.g. my-region-lora:0.8); separate several with commas.").format(entry))
            loras.append({"name": name.strip(), "scale": scale})
        return loras

    # --- running -----------------------------------------------------------------------------------

    def engine_client(self, parameters, context) -> EngineClient:
        return EngineClient(load_settings().with_url(self.optional_string(parameters, self.ENGINE_URL, context)))

    def name_upload(self, path: str, layer, role: str) -> str:
        """Remember which layer an uploaded file came from, so that engine messages naming it name the layer."""
        if not hasattr(self, "_uploads"):
            self._uploads = {}
        self._uploads[os.path.basename(path)] = f"{role} {layer.name()!r}"
        return path

    def with_layer_names(self, message: str) -> str:
        """An engine message with each uploaded file's name followed by the layer it came from."""
        for name, layer in getattr(self, "_uploads", {}).items():
            message = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", lambda match, text=f"{name} ({layer})": text, message)
        return message

    def processAlgorithm(self, parameters, context, feedback):
        try:
            return self.run_job(parameters, context, feedback)
        except EngineError as exc:
            # QGIS shows a plain QgsProcessingException by its message alone, a subclass with a traceback
            raise QgsProcessingException(self.with_layer_names(str(exc))) from None

    def run_job(self, parameters, context, feedback) -> dict:
        """Check the engine, prepare the inputs, run the job and place its results."""
        client = self.engine_client(parameters, context)
        health = client.require_task(self.TASK)
        feedback.pushInfo(self.tr("GFM4D engine {0} at {1} on {2}").format(health.get("version"), client.url, health.get("device")))
        model = self.optional_string(parameters, self.MODEL, context)
        if model is not None:
            client.require_model(self.TASK, model)
        folder = tempfile.mkdtemp(prefix="gfm4d_", dir=QgsProcessingUtils.tempFolder())
        written: list[str] = []
        finished_job = None
        try:
            params, files = self.prepare(parameters, context, feedback, folder)
            params.update(self.sampling_params(parameters, context))
            if model is not None:
                params["model"] = model
            if feedback.isCanceled():
                raise JobCancelled(self.tr("Cancelled before the job was sent to the engine; no output was written."))
            feedback.pushInfo(self.tr("Sending the {0} job ({1:.1f} MB of inputs) to {2}").format(
                self.TASK, total_size(files) / 1e6, client.url))
            job = client.submit(self.TASK, params, files, feedback)
            job_id = job["id"]
            feedback.pushInfo(self.tr("Engine job {0} queued").format(job_id))
            finished_job = client.wait(job_id, feedback, report=progress_reporter(feedback))
            results = self.deliver(client, finished_job, parameters, context, feedback, folder, written)
            if feedback.isCanceled():
                raise JobCancelled(self.tr("Cancelled while the results were downloaded; no output was kept."))
            results[self.JOB_ID] = job_id
            feedback.setProgress(100)
            return results
        except BaseException:
            for path in written:
                if os.path.isfile(path):
                    os.remove(path)
            if finished_job is not None and feedback.isCanceled():
                try:
                    client.delete(finished_job["id"])  # cancelled while downloading: delete the job's files
                except QgsProcessingException:
                    pass
            raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def fetch_raster(self, client, job, result, parameters, name, context, feedback, folder, written) -> str | None:
        """Download result `result` into raster destination parameter `name` (None when not requested)."""
        destination = self.parameterAsOutputLayer(parameters, name, context)
        if not destination:
            return None
        available = {r["name"] for r in job.get("results", [])}
        if result not in available:
            raise QgsProcessingException(self.tr("The engine's job has no {0} result (it has: {1}); update the engine.").format(
                result, ", ".join(sorted(available))))
        downloaded = client.download(job["id"], result, os.path.join(folder, f"{result}.tif"), feedback)
        written.append(destination)
        return place_raster(downloaded, destination)


def progress_reporter(feedback):
    """A job report callback mirroring the engine job's state into the feedback.

    Processing's dialog writes every progress text to its Log tab, so a text goes out only when
    it differs from the last one (the job is polled twice a second); the bar follows every poll.
    """
    last_text = [None]

    def report(job: dict) -> None:
        state = job.get("state")
        if state == "queued":
            ahead = job.get("queue_position")
            text = "Queued on the engine" + (f" ({ahead} job(s) ahead)" if ahead else "")
        else:
            text = job.get("message") or state or ""
        if text != last_text[0]:
            last_text[0] = text
            feedback.setProgressText(text)
        feedback.setProgress(100.0 * float(job.get("progress") or 0.0))

    return report
