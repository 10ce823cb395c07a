"""ORM models, one table per module. Importing this package registers them all on Base."""

from app.db.models.api_key import ApiKey
from app.db.models.dataset import Dataset
from app.db.models.idempotency import IdempotencyRecord
from app.db.models.job import Job, JobStatus
from app.db.models.job_metric import JobMetric
from app.db.models.model_alias import ModelAlias
from app.db.models.model_alias_event import ModelAliasEvent
from app.db.models.model_name import ModelName
from app.db.models.model_tag import ModelTag
from app.db.models.model_version import ModelVersion
from app.db.models.registry_state import RegistryState
from app.db.models.upload import Upload

__all__ = [
    "ApiKey",
    "Dataset",
    "IdempotencyRecord",
    "Job",
    "JobMetric",
    "JobStatus",
    "ModelAlias",
    "ModelAliasEvent",
    "ModelName",
    "ModelTag",
    "ModelVersion",
    "RegistryState",
    "Upload",
]
