"""The ``jetty`` request extension: schema, runbooks and resolution into a run plan.

A runbook-mode request goes through three steps, each a 400 with a named ``param`` on failure::

    block = parse_jetty_block(body["jetty"])                 # schema.py: strict field checks
    text = await fetch_runbook_url(url, client, max_bytes)   # runbook.py, when runbook_url is set
    text = system_text(messages)                             # plan.py, otherwise
    plan = resolve_plan(model, messages, block, text, defaults, collection_secrets)

``resolve_plan`` (plan.py) parses the front matter, renders ``{{var}}`` placeholders, picks the
agent, provider and environment, and collects the runbook's secrets. It does no I/O.
"""

from proxy.jetty.imageref import ImageRef, InvalidImageRef, parse_image_ref
from proxy.jetty.plan import (
    API_PROVIDERS,
    DEFAULT_INSTRUCTION,
    Environment,
    PlanDefaults,
    RunPlan,
    agent_providers,
    resolve_plan,
    system_text,
)
from proxy.jetty.runbook import (
    RESULTS_DIR,
    FrontMatter,
    Runbook,
    SecretDecl,
    fetch_runbook_url,
    parse_runbook,
    render_template,
)
from proxy.jetty.schema import JettyBlock, parse_jetty_block

__all__ = [
    "API_PROVIDERS",
    "DEFAULT_INSTRUCTION",
    "RESULTS_DIR",
    "Environment",
    "FrontMatter",
    "ImageRef",
    "InvalidImageRef",
    "JettyBlock",
    "PlanDefaults",
    "RunPlan",
    "Runbook",
    "SecretDecl",
    "agent_providers",
    "fetch_runbook_url",
    "parse_image_ref",
    "parse_jetty_block",
    "parse_runbook",
    "render_template",
    "resolve_plan",
    "system_text",
]
