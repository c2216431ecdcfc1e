"""The model registry as GTO git tags: versions, stages, and reading them back exactly.

Writes go through GTO's API, so ``gto show`` and ``gto history`` read the same
registry. Reads parse the tags directly: GTO orders events by their
whole-second timestamps, which is ambiguous for changes made within one
second (a rollback is several), while its ``#N`` counters are strictly
increasing. ``aegis status`` therefore reports the exact order.

Tag forms (GTO's): ``model@v1.0.0`` registers a version on a commit,
``model#prod#7`` assigns stage ``prod`` to the version on the tagged commit,
``model#prod!#8`` unassigns it. Aegis uses three stages: ``prod`` (exactly one
holder), ``bad`` (versions an operator rolled back from) and ``suspect`` (versions the
production monitor rolled back from: an operator decides whether they are bad).

Git tags are not signed, so anyone who can write to the repository could
``git tag`` or ``gto assign`` a version into prod. Every registry change is
therefore audited with the exact tags it created and their commits (the
journal's done entry), and :func:`read_registry` refuses a registry whose
tags differ from the signed audit log: a tag no audited change made, an
audited tag deleted, or a tag moved to another commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aegis import vcs
from aegis.errors import ConfigError, RefusedError
from aegis.ledger import Ledger
from aegis.registry.targets import Target, version_number
from aegis.workspace import Workspace

PROD = "prod"
BAD = "bad"
SUSPECT = "suspect"
_REGISTRATION = re.compile(r"^(?P<model>[^@#]+)@(?P<version>v\d+\.\d+\.\d+)(?P<dereg>!)?$")
_ASSIGNMENT = re.compile(r"^(?P<model>[^@#]+)#(?P<stage>[^#!]+)(?P<un>!)?#(?P<n>\d+)$")


@dataclass
class VersionInfo:
    """One registered version."""

    version: str
    number: int
    commit: str
    created: str
    tag: str
    stages: set[str] = field(default_factory=set)


@dataclass
class RegistryState:
    """A model's versions and stages, in GTO counter order."""

    model: str
    versions: list[VersionInfo]
    prod: str | None
    bad: set[str]
    prod_history: list[str]  # versions in the order they were assigned prod (oldest first)
    suspect: set[str] = field(default_factory=set)

    def known_good(self) -> list[str]:
        """Earlier prod holders neither bad nor suspect, latest first (rollback targets)."""
        out = [v for v in reversed(self.prod_history) if v != self.prod]
        return [v for v in dict.fromkeys(out) if v not in self.bad | self.suspect]

    def get(self, version: str) -> VersionInfo | None:
        return next((v for v in self.versions if v.version == version), None)

    def resolve(self, target: Target) -> VersionInfo:
        """The version a target names (``@vN`` or ``#stage``).

        Raises:
            RefusedError: ``registry``: no such version, or nothing holds the stage.
        """
        if target.version:
            info = self.get(target.version)
            if info is None:
                raise RefusedError("registry", f"{target}: no such registered version")
            return info
        if target.stage == PROD and self.prod:
            return self.get(self.prod)  # type: ignore[return-value]
        holders = [v for v in self.versions if target.stage in v.stages]
        if not holders:
            raise RefusedError("registry", f"{target}: no version holds stage '{target.stage}'")
        return holders[-1]


def _tags(ws: Workspace, model: str) -> list[tuple[str, str, str]]:
    """(tag, peeled commit, creator date) of the model's tags."""
    out = vcs.git(
        ws.root,
        "for-each-ref",
        "--format=%(refname:strip=2)%09%(*objectname)%09%(objectname)%09%(creatordate:iso-strict)",
        f"refs/tags/{model}@*",
        f"refs/tags/{model}#*",
    )
    rows = []
    for line in out.splitlines():
        name, peeled, obj, created = line.split("\t")
        rows.append((name, peeled or obj, created))
    return rows


def _check_against_audit(
    model: str, rows: list[tuple[str, str, str]], expected: dict[str, str], in_flight: set[str]
) -> None:
    actual = {name: commit for name, commit, _ in rows}
    for name, commit in sorted(actual.items()):
        if name in in_flight:
            continue
        if name not in expected:
            raise RefusedError(
                "registry",
                f"tag '{name}' was not made by an audited Aegis change (registry edited by hand)",
            )
        if expected[name] != commit:
            raise RefusedError("registry", f"tag '{name}' was moved to another commit")
    missing = sorted(set(expected) - set(actual))
    if missing:
        raise RefusedError(
            "registry", f"audited tag '{missing[0]}' of {model} is missing (deleted by hand)"
        )


def read_registry(ledger: Ledger, model: str) -> RegistryState:
    """Reads a model's registry state from its git tags, checked against the audit log.

    Raises:
        RefusedError: ``registry``: the tags differ from the audit log (a tag no
            audited change made, an audited tag deleted, or one moved).
    """
    expected, in_flight = ledger.audited_tags(model)  # a change in flight has its intent there
    rows = _tags(ledger.ws, model)
    _check_against_audit(model, rows, expected, in_flight)
    return state_of(model, rows)


def state_of(model: str, rows: list[tuple[str, str, str]]) -> RegistryState:
    """The registry state the tag rows ``(tag, commit, created)`` describe (unchecked)."""
    versions: dict[str, VersionInfo] = {}
    by_commit: dict[str, str] = {}
    events: list[tuple[int, str, str, bool]] = []
    for name, commit, created in rows:
        if (m := _REGISTRATION.match(name)) and m["model"] == model:
            if m["dereg"]:
                continue
            info = VersionInfo(m["version"], version_number(m["version"]), commit, created, name)
            versions[info.version] = info
            by_commit[commit] = info.version
        elif (m := _ASSIGNMENT.match(name)) and m["model"] == model:
            events.append((int(m["n"]), m["stage"], commit, bool(m["un"])))
    history: list[str] = []
    for _, stage, commit, unassign in sorted(events):
        version = by_commit.get(commit)
        if version is None:
            continue  # a stage on an unregistered commit: not an Aegis version
        stages = versions[version].stages
        if unassign:
            stages.discard(stage)
        else:
            stages.add(stage)
            if stage == PROD and (not history or history[-1] != version):
                history.append(version)
    ordered = sorted(versions.values(), key=lambda v: v.number)
    prod_holders = [v.version for v in ordered if PROD in v.stages]
    prod = None
    if prod_holders:  # more than one only mid-change; the latest assigned wins
        prod = max(prod_holders, key=lambda v: len(history) - history[::-1].index(v))
    return RegistryState(
        model=model,
        versions=ordered,
        prod=prod,
        bad={v.version for v in ordered if BAD in v.stages},
        prod_history=history,
        suspect={v.version for v in ordered if SUSPECT in v.stages},
    )


def read_tags(ws: Workspace, model: str) -> RegistryState:
    """The registry state of the tags alone, *not* checked against the audit log.

    Only for planning tag names under the lock and for tests of tag mechanics:
    everything that decides uses :func:`read_registry`.
    """
    return state_of(model, _tags(ws, model))


def models(ws: Workspace) -> list[str]:
    """Names of the models with registered versions."""
    out = vcs.git(ws.root, "for-each-ref", "--format=%(refname:strip=2)", "refs/tags/")
    return sorted({m["model"] for t in out.split() if (m := _REGISTRATION.match(t))})


def tag_commits(ws: Workspace, tags: list[str]) -> dict[str, str]:
    """``{tag: commit}`` of the given tags that exist (peeled to the commit)."""
    out = vcs.git(
        ws.root,
        "for-each-ref",
        "--format=%(refname:strip=2)%09%(*objectname)%09%(objectname)",
        *[f"refs/tags/{t}" for t in tags],
    )
    found = {}
    for line in out.splitlines():
        name, peeled, obj = line.split("\t")
        if name in tags:
            found[name] = peeled or obj
    return found


def tag_exists(ws: Workspace, tag: str) -> bool:
    return bool(vcs.git(ws.root, "tag", "-l", "--", tag).strip())


def delete_tag(ws: Workspace, tag: str) -> None:
    vcs.git(ws.root, "tag", "-d", "--", tag)


def _gto(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception as exc:  # GTO raises its own hierarchy and scmrepo errors
        raise ConfigError(f"gto {call.__name__} failed: {exc}") from None


def register_version(ws: Workspace, *, model: str, version: str, ref: str, message: str) -> str:
    """Tags commit ``ref`` as ``model@version``; returns the tag name."""
    from gto import api

    _gto(api.register, str(ws.root), model, ref, version=version, message=message)
    return f"{model}@{version}"


def next_stage_tag(ws: Workspace, *, model: str, stage: str, unassign: bool = False) -> str:
    """The tag name GTO's next assignment (or unassignment) of ``stage`` will create."""
    return plan_stage_tags(ws, model=model, ops=[(stage, unassign)])[0]


def plan_stage_tags(ws: Workspace, *, model: str, ops: list[tuple[str, bool]]) -> list[str]:
    """Tag names that a sequence of (stage, unassign) operations will create, in order.

    GTO numbers stage tags with one counter per model, so under the workspace lock
    the names are known before any is created (the journal's intent lists them).
    """
    numbers = [int(m["n"]) for name, _, _ in _tags(ws, model) if (m := _ASSIGNMENT.match(name))]
    start = max(numbers, default=0) + 1
    return [
        f"{model}#{stage}{'!' if unassign else ''}#{start + i}"
        for i, (stage, unassign) in enumerate(ops)
    ]


def assign_stage(ws: Workspace, *, model: str, version: str, stage: str, message: str) -> str:
    """Assigns ``stage`` to ``version`` (again, if it held it before); returns the tag."""
    from gto import api

    tag = next_stage_tag(ws, model=model, stage=stage)
    _gto(api.assign, str(ws.root), model, stage, version=version, message=message, force=True)
    return tag


def unassign_stage(ws: Workspace, *, model: str, version: str, stage: str, message: str) -> str:
    """Removes ``stage`` from ``version``; returns the tag."""
    from gto import api

    tag = next_stage_tag(ws, model=model, stage=stage, unassign=True)
    _gto(api.unassign, str(ws.root), model, version=version, stage=stage, message=message)
    return tag
