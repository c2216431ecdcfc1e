"""``params.yaml``: one pydantic model per pipeline stage.

Unknown keys, wrong types and out-of-range values are refused with the
key's dotted path. Credentials are never read from params: any key that
looks like one is refused outright, whatever its section.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from aegis.errors import ConfigError

# Whole words of a snake_case key, so `aws_session_token` is refused but `max_tokens` is not.
_CREDENTIAL_KEY = re.compile(
    r"(^|_)(secret|password|passwd|token|access_key|api_key|private_key|credentials?)(_|$)", re.I
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class IngestParams(_Section):
    """Limits and I/O behaviour of verified ingest."""

    max_file_bytes: int = Field(default=2 * 1024**3, gt=0, description="largest accepted file")
    max_files: int = Field(default=10_000, gt=0, le=1_000_000, description="most files per dataset")
    io_retries: int = Field(default=3, ge=0, le=10, description="retries of S3 and DVC-push I/O")
    io_retry_delay_s: float = Field(default=2.0, ge=0, le=300)


class PipelineParams(_Section):
    """What the DVC stages run on."""

    datasets: list[str] = Field(
        default=["digits"], min_length=1, description="datasets the dvc.yaml stages run for"
    )


class ValidateParams(_Section):
    """Gates of the validation step."""

    max_quarantine_fraction: float = Field(
        default=0.05, ge=0, le=1, description="largest share of rows that may be quarantined"
    )
    max_psi: float = Field(default=0.25, gt=0, description="largest PSI of any feature or label")
    psi_bins: int = Field(default=10, ge=2, le=100, description="quantile bins of numeric features")
    categorical_max_values: int = Field(
        default=20, ge=1, le=1000, description="at most this many values: binned per value"
    )


class ModelParams(_Section):
    """Architecture: a small CNN for square images, an MLP for tabular data."""

    kind: Literal["auto", "cnn", "mlp"] = "auto"
    channels: list[Annotated[int, Field(ge=1, le=512)]] = Field(default=[16, 32], min_length=1)
    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default=[64], min_length=1)
    activation: Literal["relu", "tanh"] = "relu"
    norm: Literal["none", "group"] = "none"


class DPParams(_Section):
    """Differentially private SGD with Opacus."""

    target_epsilon: float = Field(default=3.0, gt=0, le=100)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    secure_mode: bool = False
    accountant: Literal["prv", "rdp"] = "prv"


class TrainParams(_Section):
    """Robust and optionally private training."""

    # GTO's artifact-name rule without '/': it becomes a path component (releases/<name>/)
    # and a git tag prefix, so nothing that could climb out of releases/ or fail at tag time.
    model_name: (
        Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,98}[A-Za-z0-9])?$")] | None
    ) = Field(default=None, description="default <dataset>-model")
    seed: int = Field(default=0, ge=0)
    threads: int = Field(default=2, ge=1, le=256)
    test_fraction: float = Field(default=0.2, gt=0, lt=0.9)
    val_fraction: float = Field(default=0.1, ge=0, lt=0.5)
    epochs: int = Field(default=10, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=1_000_000)
    lr: float = Field(default=0.05, gt=0, le=10)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    early_stop_patience: int = Field(default=0, ge=0, description="epochs without val-loss gain")
    model: ModelParams = ModelParams()
    defense: Literal["none", "fgsm_rs", "pgd", "trades"] = "pgd"
    epsilon: float = Field(default=0.1, ge=0, description="L-inf radius (input units)")
    step_size: float = Field(default=0.025, gt=0)
    steps: int = Field(default=7, ge=1, le=1000)
    trades_beta: float = Field(default=6.0, ge=0)
    # Input domain that attacks stay in: "auto" = [0, 1] for images (scaled to it), none for
    # tabular data (standardized); or an explicit [min, max] in model-input units.
    input_domain: (
        Literal["auto", "none"] | Annotated[list[float], Field(min_length=2, max_length=2)]
    ) = "auto"
    privacy: Literal["off", "dp"] = "off"
    dp: DPParams = DPParams()
    # Noise-robust losses: generalized CE (Zhang & Sabuncu 2018) and symmetric CE (Wang et
    # al. 2019) bound what a wrong label can pull, at some cost in clean accuracy.
    loss: Literal["ce", "gce", "sce"] = "ce"
    gce_q: float = Field(default=0.7, gt=0, le=1, description="GCE's q (1 = MAE, to 0 = CE)")
    sce_alpha: float = Field(default=0.1, ge=0, description="SCE's weight of CE")
    sce_beta: float = Field(default=1.0, ge=0, description="SCE's weight of reverse CE")


class SqueezeParams(_Section):
    """Feature squeezing: the gateway's adversarial-input detector, calibrated in evaluation.

    Evaluation fits the detector's threshold on clean held-out inputs to
    ``target_fpr`` and signs it into ``metrics.json``; the gateway reads it from there.
    """

    enabled: bool = True
    # Chosen on benchmark seeds 100-102 (benchmarks/_serve_detector.py): on 8x8 digits a 2x2
    # median changes the answer on most clean inputs, so it detects nothing; 3 bits detected
    # the most PGD/APGD examples at <= 5 % FPR, and a grid of 1 sd was the only table grid
    # that kept the FPR of breast_cancer's PGD-trained models under 5 %.
    bits: int = Field(default=3, ge=1, le=8, description="bit depth images are reduced to")
    median: int = Field(default=0, ge=0, le=5, description="median filter size (0 = none)")
    table_step: float = Field(default=1.0, gt=0, le=10, description="grid of tables, in std units")
    target_fpr: float = Field(default=0.04, gt=0, le=0.5, description="clean inputs flagged")
    samples: int = Field(default=1000, ge=20, description="clean inputs it is calibrated on")


class ExtractionParams(_Section):
    """The gateway's extraction monitor, fitted in evaluation (``metrics.json``: extraction).

    Class means and covariance of penultimate features come from the training split,
    the out-of-distribution threshold from the validation split, PRADA's ``delta`` from
    benign replays of the training split: the test split stays for measuring.
    """

    enabled: bool = True
    ood_rate: float = Field(
        default=0.05, gt=0, le=0.5, description="clean queries above the OOD threshold"
    )
    streams: int = Field(default=10, ge=1, le=100, description="benign replays setting delta")


class EvaluateParams(_Section):
    """Honest evaluation: strong and independent attacks, calibration, privacy."""

    max_samples: int = Field(default=300, ge=1, description="test samples attacked")
    pgd_steps: int = Field(default=20, ge=1, le=10_000)
    pgd_restarts: int = Field(default=1, ge=1, le=100)
    epsilons: list[Annotated[float, Field(ge=0)]] = Field(default=[0.05, 0.1, 0.15, 0.2])
    independent: list[Literal["apgd-ce", "apgd-t", "square"]] = Field(
        default=["apgd-ce", "apgd-t", "square"]
    )
    apgd_steps: int = Field(default=100, ge=1, le=10_000, description="APGD iterations")
    apgd_targets: int = Field(default=9, ge=1, le=100, description="APGD-T target classes")
    square_queries: int = Field(default=500, ge=1)
    square_samples: int = Field(default=100, ge=1, description="samples for Square (slow)")
    ece_bins: int = Field(default=15, ge=2, le=100)
    mia: bool = True
    # An earlier-accepted dataset, bound by its manifest digest, that evaluation and the
    # promotion gates also measure on: a delivery that poisons its own test rows cannot vouch
    # for itself. Its rows (by feature hash) never train.
    trusted_set: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}@sha256:[0-9a-f]{64}$",
        description="NAME@sha256:<manifest digest>",
    )
    squeeze: SqueezeParams = SqueezeParams()
    extraction: ExtractionParams = ExtractionParams()


SCREENS = ("label-changed", "label-issue", "backdoor")


class LabelDiffParams(_Section):
    """``label-changed``: a row of the last accepted version with another label now."""

    # A flip plus a one-pixel change must not escape: a row matches an earlier one when at
    # most this many features differ (by more than `tolerance`), the rest being equal.
    max_changed_features: int = Field(default=2, ge=0, le=1000)
    tolerance: float = Field(default=0.0, ge=0, description="absolute, per feature")
    neighbours: int = Field(default=8, ge=1, le=100, description="candidates checked per row")
    max_rows: int = Field(default=2_000_000, ge=1, description="largest version indexed")


class LabelIssueParams(_Section):
    """``label-issue``: out-of-fold ensemble probabilities (cleanlab) and k-NN agreement."""

    folds: int = Field(default=5, ge=2, le=20)
    knn: int = Field(default=10, ge=1, le=100)
    # A row is flagged when another class's normalised probability beats its own label's
    # by more than `threshold` after refits without the rows above `drop_threshold`
    # (chosen on benchmark seeds 100-104; see the README).
    threshold: float = Field(default=0.75, gt=0, le=1)
    drop_threshold: float = Field(default=0.6, gt=0, le=1)
    refits: int = Field(default=5, ge=0, le=20)
    min_rows: int = Field(default=20, ge=2)
    min_gain: float = Field(default=0.1, ge=0, le=1, description="labels the features predict")


class BackdoorParams(_Section):
    """``backdoor``: per-class clustering and spectral scores of penultimate features."""

    epochs: int = Field(default=10, ge=1, le=1000, description="preliminary model's epochs")
    dims: int = Field(default=10, ge=1, le=256, description="PCA dimensions clustered")
    max_share: float = Field(default=0.5, gt=0, lt=1, description="largest suspect cluster share")
    min_rows: int = Field(default=20, ge=2)
    min_cluster: int = Field(default=5, ge=1)
    outlier_z: float = Field(default=3.0, gt=0)
    refits: int = Field(default=3, ge=0, le=20)
    # a class is poisoned only if the shift its suspects share moves >= this share of the
    # other classes' rows to it (only a trigger does); the rest say "no poison here"
    min_transfer: float = Field(default=0.2, gt=0, le=1)
    min_match: float = Field(default=0.3, gt=0, le=1)
    match_refits: int = Field(default=3, ge=0, le=20)
    neighbours: int = Field(default=5, ge=1, le=100)


class ModelScanParams(_Section):
    """The trigger search on each trained model (flag ``backdoor``)."""

    enabled: bool = True
    samples: int = Field(default=100, ge=2, description="held-out inputs the search uses")
    steps: int = Field(default=150, ge=1, le=10_000)
    lr: float = Field(default=0.1, gt=0)
    cost: float = Field(default=1.0, ge=0)
    success: float = Field(default=0.95, gt=0, le=1)
    min_anomaly: float = Field(default=2.0, gt=0, description="Neural Cleanse's MAD index")
    min_ratio: float = Field(default=2.0, gt=1, description="median norm / smallest norm")
    two_class_ratio: float = Field(default=3.0, gt=1, description="the same, with 2 classes")


class ScreenParams(_Section):
    """Poisoning screens before training, and the limits on what they flag."""

    enabled: list[Literal["label-changed", "label-issue", "backdoor"]] = Field(
        default=list(SCREENS), description="screens run on every validated version"
    )
    # Screens count apart from validate.max_quarantine_fraction: 5 % flips on digits is 90
    # rows, already over the expectations' 5 %.
    max_flagged_fraction: float = Field(default=0.15, ge=0, le=1)
    max_supplier_flag_rate: float = Field(
        default=0.2, ge=0, le=1, description="a supplier above this share is refused at ingest"
    )
    label_diff: LabelDiffParams = LabelDiffParams()
    label_issue: LabelIssueParams = LabelIssueParams()
    backdoor: BackdoorParams = BackdoorParams()
    model_scan: ModelScanParams = ModelScanParams()


_DURATION = r"^[1-9][0-9]*[smhd]$"


def duration_seconds(text: str) -> int:
    """Converts a checked duration such as ``72h`` or ``30m`` to seconds."""
    return int(text[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]


class SignParams(_Section):
    """How releases are signed (the pipeline key, or Sigstore keyless)."""

    method: Literal["key", "sigstore"] = "key"
    # Sigstore keyless only: the identity (e.g. a CI workflow or e-mail) and OIDC issuer
    # that verification requires. Keyless signing needs the network.
    identity: str | None = None
    oidc_issuer: str | None = None
    use_staging: bool = False


class PromoteParams(_Section):
    """Policy gates and approvals of promotion to ``prod``."""

    min_clean_acc: float = Field(default=0.9, ge=0, le=1)
    min_robust_acc: float = Field(default=0.5, ge=0, le=1, description="worst-case robust")
    max_epsilon: float = Field(default=10.0, gt=0, description="largest DP ε (when DP is on)")
    max_mia_auc: float = Field(default=0.6, ge=0.5, le=1)
    max_regression: float = Field(
        default=0.02, ge=0, le=1, description="largest drop vs current prod (clean, robust)"
    )
    approvals_required: int = Field(default=1, ge=1, le=10, description="distinct owners")
    approval_ttl: str = Field(default="72h", pattern=_DURATION, description="request expiry")
    wait_timeout: str = Field(default="1h", pattern=_DURATION, description="--wait gives up")


_CRON_FIELD = r"[0-9A-Za-z*/,\-?#LW]+"
_S3_OR_DIR = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^\s]*)?|[^\s][^\x00]*)$"


class TriggersParams(_Section):
    """What starts a retrain by itself: a schedule, and new signed datasets in watched sources."""

    # Five-field cron (minute hour day month weekday), or null for no schedule; the scheduled
    # run re-lists the sources, so it also catches an arrival whose event was lost.
    schedule: str | None = Field(
        default=None, pattern=rf"^{_CRON_FIELD}( {_CRON_FIELD}){{4}}$", description="cron"
    )
    sources: list[Annotated[str, Field(min_length=1, max_length=1024, pattern=_S3_OR_DIR)]] = Field(
        default=[], max_length=100, description="directories and s3:// prefixes"
    )
    poll_interval: float = Field(default=10.0, ge=1, le=3600, description="seconds between polls")
    # One watch run polls for this long, then ends (the next scheduled run takes over): one
    # process start per `watch_for` instead of per poll.
    watch_for: str = Field(default="5m", pattern=_DURATION, description="one watch run's length")
    within: float = Field(
        default=60.0, ge=0, le=86400, description="events of one digest within this start one run"
    )


class RunParams(_Section):
    """Where the evaluation's independent attacks and ε sweep run."""

    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = Field(
        default=None, max_length=512, description="an existing Dask scheduler; null = local"
    )
    dask_workers: int = Field(default=2, ge=1, le=256, description="workers of a local cluster")


class AuditParams(_Section):
    """The audit log's copy off the machine."""

    ship_to: str | None = Field(
        default=None,
        pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^\s]*)?$",
        description="s3://bucket/prefix that receives every entry",
    )
    retention_days: int = Field(
        default=365, ge=1, le=36500, description="Object Lock retention when the bucket has it"
    )


class StorageParams(_Section):
    """Weights at rest: server-side encryption of the DVC remote's objects.

    Applies only when the DVC remote is ``s3://`` (a local remote is a directory of
    this machine): every push asks for it and is checked after (``aegis/storage.py``).
    """

    sse: Literal["off", "AES256", "aws:kms"] = Field(
        default="AES256", description="off | AES256 (SSE-S3) | aws:kms (SSE-KMS)"
    )
    kms_key_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        pattern=r"^[A-Za-z0-9:/_.+=,@-]+$",
        description="the KMS key (id, ARN or alias/NAME); only with sse: aws:kms",
    )

    @model_validator(mode="after")
    def _kms_key_only_with_kms(self) -> StorageParams:
        if self.sse == "aws:kms" and self.kms_key_id is None:
            raise PydanticCustomError(
                "kms_key_missing", "kms_key_id is required with sse: aws:kms (a KMS key id or ARN)"
            )
        if self.sse != "aws:kms" and self.kms_key_id is not None:
            raise PydanticCustomError(
                "kms_key_unused",
                "kms_key_id is set but sse is {sse}: a KMS key is used only with sse: aws:kms",
                {"sse": self.sse},
            )
        return self


class ServeParams(_Section):
    """How the gateway answers. Read from the *served release's* signed ``params.yaml``.

    An operator who edits the workspace's ``params.yaml`` changes what the next
    release will serve, never what the current one does.
    """

    output: Literal["label", "topk", "probs"] = Field(
        default="label", description="what a prediction reveals besides the label"
    )
    topk: int = Field(default=3, ge=1, le=100, description="classes shown with output: topk")
    round: int = Field(default=2, ge=0, le=8, description="digits probabilities are rounded to")
    on_adversarial: Literal["off", "flag", "refuse"] = Field(
        default="flag", description="a request the squeezing detector flags"
    )
    log_inputs: Literal["full", "summary", "none"] = Field(
        default="summary", description="what the prediction log keeps of inputs"
    )
    max_batch: int = Field(default=256, ge=1, le=100_000, description="rows per request")
    domain_margin: float = Field(
        default=0.1, ge=0, le=10, description="share of a feature's training range allowed beyond"
    )
    log_segment_rows: int = Field(default=5000, ge=1, le=10_000_000)
    log_flush_s: float = Field(default=2.0, gt=0, le=3600, description="a segment's longest age")
    max_store_bytes: int = Field(
        default=512 * 1024**2, ge=1024**2, description="size cap of .aegis/serve/ (oldest go)"
    )
    reload_interval: float = Field(default=0.5, gt=0, le=60, description="registry poll, seconds")
    on_extraction: Literal["off", "alert", "throttle", "block"] = Field(
        default="alert", description="a client the extraction monitor flags"
    )
    throttle_factor: int = Field(
        default=10, ge=2, le=10_000, description="a throttled client's rate is divided by this"
    )
    # opt-in for now (0.005 is the intended default): answers compared with the model's
    # offline labels, as tests and the demo do, would differ on the marked rows
    watermark_rate: float = Field(
        default=0.0, ge=0, le=0.05, description="share of answers given a keyed wrong label"
    )


MonitorSignal = Literal[
    "softmax_ks", "label_chi2", "ood_count", "input_psi", "adversarial_count",
    "extraction_count", "latency_shift", "feedback_accuracy",
]  # fmt: skip
MonitorAction = Literal["alert", "throttle", "retrain", "rollback"]
# A shift of the model's outputs or a fall in labelled accuracy is the model's problem:
# roll back. Out-of-distribution, shifted, adversarial or extracting inputs are the
# callers': slow down the keys sending them. Slow answers may be the host's: alert.
DEFAULT_MONITOR_ACTIONS: dict[str, str] = {
    "softmax_ks": "rollback", "label_chi2": "rollback", "ood_count": "throttle",
    "input_psi": "throttle", "adversarial_count": "throttle", "extraction_count": "throttle",
    "latency_shift": "alert", "feedback_accuracy": "rollback",
}  # fmt: skip


class MonitorParams(_Section):
    """The production monitor. Its thresholds are fitted in evaluation (``metrics.json``:
    monitor) from this budget, so they are read from the *served release's* params.

    Per-window false-alarm rate: ``(false_alarms_per_day / windows_per_day) ** (1 /
    confirm)``, split evenly over the signals; a breach needs ``confirm`` windows in a row.
    """

    enabled: bool = True
    window: int = Field(default=50, ge=10, le=100_000, description="answered rows per window")
    false_alarms_per_day: float = Field(default=0.1, gt=0, le=100)
    windows_per_day: float = Field(
        default=1000, gt=0, description="expected windows a day (traffic / window)"
    )
    confirm: int = Field(default=2, ge=1, le=10, description="windows in a row that breach")
    boots: int = Field(default=4000, ge=500, le=100_000, description="permutation replicates")
    actions: dict[MonitorSignal, MonitorAction] = Field(
        default_factory=lambda: dict(DEFAULT_MONITOR_ACTIONS),
        description="per signal: alert | throttle | retrain | rollback (the strongest wins)",
    )
    single_client_share: float = Field(
        default=0.8, gt=0.5, le=1,
        description="a breach this much from one client key only throttles that key",
    )  # fmt: skip
    throttle_share: float = Field(
        default=0.25, gt=0, le=1, description="a throttle covers keys with this share of rows"
    )
    throttle_minutes: float = Field(default=60, gt=0, le=7 * 24 * 60)
    contain_timeout: float = Field(
        default=30, gt=0, le=600, description="seconds to wait for the gateway to serve it"
    )
    every: float | None = Field(
        default=None, ge=1, le=86_400, description="the monitor deployment's interval, seconds"
    )
    gateway: str | None = Field(
        default=None, pattern=r"^https?://", description="the gateway's URL (containment)"
    )

    @field_validator("actions")
    @classmethod
    def _all_signals(cls, value: dict[str, str]) -> dict[str, str]:
        return {**DEFAULT_MONITOR_ACTIONS, **value}  # a signal left out keeps its default


class Params(_Section):
    """The whole ``params.yaml``."""

    pipeline: PipelineParams = PipelineParams()
    ingest: IngestParams = IngestParams()
    # `validate` is a BaseModel method name, so the attribute is `validation`.
    validation: ValidateParams = Field(default=ValidateParams(), alias="validate")
    screen: ScreenParams = ScreenParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    sign: SignParams = SignParams()
    promote: PromoteParams = PromoteParams()
    triggers: TriggersParams = TriggersParams()
    run: RunParams = RunParams()
    audit: AuditParams = AuditParams()
    storage: StorageParams = StorageParams()
    serve: ServeParams = ServeParams()
    monitor: MonitorParams = MonitorParams()


def _find_credential_keys(node: Any, prefix: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if _CREDENTIAL_KEY.search(str(key)):
                found.append(path)
            found.extend(_find_credential_keys(value, path))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_find_credential_keys(value, f"{prefix}[{index}]"))
    return found


def parse_params(data: Any, *, source: str = "params.yaml") -> Params:
    """Validates a parsed params mapping.

    Args:
        data: The mapping read from YAML (``None`` means empty).
        source: Name used in error messages.

    Returns:
        The validated parameters.

    Raises:
        ConfigError: A key is unknown, has the wrong type, is out of range, or
            looks like a credential.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    credentials = _find_credential_keys(data)
    if credentials:
        raise ConfigError(
            f"{source}: {credentials[0]}: credentials are never read from params; "
            "set them in the environment (e.g. AWS_ACCESS_KEY_ID)"
        )
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{source}: {path}: {err['msg']}") from None


PARAMS_LIMIT = 1024 * 1024  # params.yaml and dvc.yaml hold a few KiB; a larger one is not ours


def read_config_yaml(path: Path) -> Any:
    """Reads ``params.yaml`` or ``dvc.yaml`` as DVC does (YAML 1.2), refusing hostile YAML.

    Raises:
        ConfigError: Missing, unreadable, not a regular file, too large, not
            UTF-8, not YAML, or YAML with aliases or duplicate keys (the line is named).
    """
    from aegis.errors import UnsafeFileError
    from aegis.fileutil import read_regular
    from aegis.yamlio import YamlRefused, load_yaml

    try:
        text = read_regular(path, limit=PARAMS_LIMIT, what=path.name).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except UnsafeFileError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.detail})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        return load_yaml(text)
    except YamlRefused as exc:
        where = f" (line {exc.line})" if exc.line else ""
        raise ConfigError(f"{path.name}: not valid YAML: {exc}{where}") from None


def load_params(path: Path) -> Params:
    """Reads and validates ``params.yaml`` (see :func:`read_config_yaml`).

    Raises:
        ConfigError: The file is missing, not YAML Aegis reads, or invalid.
    """
    return parse_params(read_config_yaml(path), source=path.name)


def policy_of(params: PromoteParams) -> dict[str, Any]:
    """The promotion policy as bound into a request: the whole ``promote`` section."""
    return params.model_dump(mode="json")


def policy_digest(params: PromoteParams) -> str:
    """``sha256:`` of the canonical JSON of the ``promote`` section (gates, approvals, TTL)."""
    import hashlib
    import json

    canonical = json.dumps(policy_of(params), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def override_params(path: Path, overrides: dict[str, dict[str, Any]]) -> Params:
    """Updates sections of a ``params.yaml`` file, validating the result before writing it.

    Args:
        path: The params file.
        overrides: ``{section: {key: value}}`` merged into the existing sections.

    Returns:
        The validated parameters as written.

    Raises:
        ConfigError: The file is invalid, or the overrides make it invalid.
    """
    data = read_config_yaml(path) or {}
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    params = parse_params(data, source=path.name)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return params
