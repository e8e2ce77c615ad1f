from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("input_text", "target_text", "session_id", "turn_id")
    INPUT_TEXT_FIELD_NUMBER: _ClassVar[int]
    TARGET_TEXT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    input_text: str
    target_text: str
    session_id: str
    turn_id: str
    def __init__(self, input_text: _Optional[str] = ..., target_text: _Optional[str] = ..., session_id: _Optional[str] = ..., turn_id: _Optional[str] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ("job_id", "status")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: str
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "step", "total_steps", "loss", "metrics", "message", "version", "created_at", "updated_at", "input_text", "target_text")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    INPUT_TEXT_FIELD_NUMBER: _ClassVar[int]
    TARGET_TEXT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    step: int
    total_steps: int
    loss: float
    metrics: _containers.ScalarMap[str, float]
    message: str
    version: str
    created_at: float
    updated_at: float
    input_text: str
    target_text: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., message: _Optional[str] = ..., version: _Optional[str] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., input_text: _Optional[str] = ..., target_text: _Optional[str] = ...) -> None: ...

class ListCandidatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCandidatesResponse(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, candidates: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class PromoteCandidateRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("id", "parent", "created_at", "feedback_ids", "metrics", "status", "live", "plan_json")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_IDS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    PLAN_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    parent: str
    created_at: float
    feedback_ids: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.ScalarMap[str, float]
    status: str
    live: bool
    plan_json: str
    def __init__(self, id: _Optional[str] = ..., parent: _Optional[str] = ..., created_at: _Optional[float] = ..., feedback_ids: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., status: _Optional[str] = ..., live: _Optional[bool] = ..., plan_json: _Optional[str] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("to_version",)
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    to_version: str
    def __init__(self, to_version: _Optional[str] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetInsightsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Mechanism(_message.Message):
    __slots__ = ("module", "layer", "strength", "effectiveness", "confidence", "edits")
    MODULE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVENESS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    EDITS_FIELD_NUMBER: _ClassVar[int]
    module: str
    layer: int
    strength: float
    effectiveness: float
    confidence: float
    edits: int
    def __init__(self, module: _Optional[str] = ..., layer: _Optional[int] = ..., strength: _Optional[float] = ..., effectiveness: _Optional[float] = ..., confidence: _Optional[float] = ..., edits: _Optional[int] = ...) -> None: ...

class Insights(_message.Message):
    __slots__ = ("format", "updates", "deployed", "repairs", "learner_versions", "learner_version", "mechanisms", "insights_json")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    DEPLOYED_FIELD_NUMBER: _ClassVar[int]
    REPAIRS_FIELD_NUMBER: _ClassVar[int]
    LEARNER_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LEARNER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MECHANISMS_FIELD_NUMBER: _ClassVar[int]
    INSIGHTS_JSON_FIELD_NUMBER: _ClassVar[int]
    format: str
    updates: int
    deployed: int
    repairs: int
    learner_versions: int
    learner_version: str
    mechanisms: _containers.RepeatedCompositeFieldContainer[Mechanism]
    insights_json: str
    def __init__(self, format: _Optional[str] = ..., updates: _Optional[int] = ..., deployed: _Optional[int] = ..., repairs: _Optional[int] = ..., learner_versions: _Optional[int] = ..., learner_version: _Optional[str] = ..., mechanisms: _Optional[_Iterable[_Union[Mechanism, _Mapping]]] = ..., insights_json: _Optional[str] = ...) -> None: ...

class ImportInsightsRequest(_message.Message):
    __slots__ = ("insights_json",)
    INSIGHTS_JSON_FIELD_NUMBER: _ClassVar[int]
    insights_json: str
    def __init__(self, insights_json: _Optional[str] = ...) -> None: ...

class ImportInsightsResponse(_message.Message):
    __slots__ = ("added",)
    ADDED_FIELD_NUMBER: _ClassVar[int]
    added: int
    def __init__(self, added: _Optional[int] = ...) -> None: ...
