"""Custom search attributes: a fleet's workflows filtered by experiment, configuration, model,
dataset or outcome in the Temporal UI and with `temporal workflow list --query`, e.g.

    temporal workflow list --query 'BertExperiment="demo" AND BertModel="tiny-bert"'

The experiment's coordinator and a sweep's workflow get BertExperiment (the experiment's or the
sweep's name) and BertStatus (`running`, then `completed`, `failed` or `cancelled`); each
configuration's (each trial's) training and eval workflows get BertExperiment, BertConfig (the
configuration's or trial's name), BertModel and BertDataset. They must be registered in the
namespace: `make up` and the test servers do it when they create their database
(orchestration.servers), an older database or a cluster's operator once (docs/deploy.md).

Where they are not registered, an experiment runs without them: the client starts it without
attributes (and logs why), and the coordinator, seeing none, neither sets them on its children
nor updates them (a workflow that upserts an unknown attribute would fail its task forever).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from temporalio import workflow
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

if TYPE_CHECKING:
    from orchestration.types import RunConfig

EXPERIMENT = SearchAttributeKey.for_keyword("BertExperiment")
CONFIG = SearchAttributeKey.for_keyword("BertConfig")
MODEL = SearchAttributeKey.for_keyword("BertModel")
DATASET = SearchAttributeKey.for_keyword("BertDataset")
STATUS = SearchAttributeKey.for_keyword("BertStatus")
ALL = (EXPERIMENT, CONFIG, MODEL, DATASET, STATUS)


def registration_args() -> list[str]:
    """`temporal server start-dev` flags that register every attribute."""
    return [arg for key in ALL for arg in ("--search-attribute", f"{key.name}=Keyword")]


def experiment_attributes(experiment: str) -> TypedSearchAttributes:
    """A coordinator's attributes when it starts."""
    return TypedSearchAttributes(
        [SearchAttributePair(EXPERIMENT, experiment), SearchAttributePair(STATUS, "running")]
    )


def searchable() -> bool:
    """In a workflow: its client could set the attributes, so the namespace has them."""
    return workflow.info().typed_search_attributes.get(EXPERIMENT) is not None


def run_attributes(experiment: str, cfg: RunConfig) -> TypedSearchAttributes | None:
    """In a coordinator or a sweep: the attributes of a configuration's (a trial's) training and
    eval workflows; None where the parent itself has none."""
    if not searchable():
        return None
    return TypedSearchAttributes(
        [
            SearchAttributePair(EXPERIMENT, experiment),
            SearchAttributePair(CONFIG, cfg.name),
            SearchAttributePair(MODEL, cfg.model),
            SearchAttributePair(DATASET, cfg.dataset),
        ]
    )


def unregistered(err: RPCError) -> bool:
    """True when the server refused a start because the namespace lacks an attribute."""
    return err.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in err.message


async def start_searchable(
    client: Client, workflow: Any, arg: Any, name: str, **options: Any
) -> None:
    """Start `workflow` searchable by `name` (experiment_attributes); where the namespace lacks
    the attributes it starts without them, and a warning says why and how to register them."""
    attributes: TypedSearchAttributes | None = experiment_attributes(name)
    while True:
        try:
            await client.start_workflow(workflow, arg, search_attributes=attributes, **options)
            return
        except RPCError as err:
            if not (attributes and unregistered(err)):
                raise
            logging.getLogger(__name__).warning(
                "%s starts without search attributes: %s (register them: "
                'docs/deploy.md, "Search attributes")',
                options.get("id"),
                err.message,
            )
            attributes = None
