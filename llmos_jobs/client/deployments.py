"""The deployment calls of the Python client (docs/deployments.md): deploy a model,
update it rolling or blue-green, roll it back, and read where its replicas stand."""

from __future__ import annotations

from pathlib import Path

from llmos_jobs.client.audit import audited
from llmos_jobs.db.deployment_tables import DeploymentPublic
from llmos_jobs.db.session import Database
from llmos_jobs.services import deployments as deployment_service
from llmos_jobs.services.submission import Submitter


class DeploymentCalls:
    # Set by LlmosClient.__init__.
    tenant: str
    database: Database
    actor: str | None
    submitter: Submitter

    @audited("models.deploy")
    def deploy_model(self, name: str, *, replicas: int, gpu_memory_gb: float | None = None
                     ) -> DeploymentPublic:
        """State that ``replicas`` replicas of ``name`` should serve; the control
        process places, loads and warms them."""
        return deployment_service.deploy(self.submitter, model=name, replicas=replicas,
                                         gpu_memory_gb=gpu_memory_gb)

    @audited("models.update")
    def update_model(self, name: str, path: str | Path, *, strategy: str = "rolling"
                     ) -> DeploymentPublic:
        """Register ``path`` as the next version of the deployed ``name`` and move its
        replicas to it (``rolling`` or ``blue-green``)."""
        return deployment_service.update(self.submitter, model=name, path=path,
                                         strategy=deployment_service.Strategy(strategy))

    @audited("models.rollback")
    def rollback_model(self, name: str) -> DeploymentPublic:
        return deployment_service.rollback(self.submitter, model=name)

    def deployment(self, name: str) -> DeploymentPublic:
        return deployment_service.status(self.submitter, name)

    def deployments(self) -> list[DeploymentPublic]:
        return deployment_service.list_all(self.submitter)
