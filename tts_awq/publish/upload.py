"""Push a checked package to the Hugging Face Hub: package files + the generated README.md, in one commit.

Checks before anything is sent: the package's files still match provenance.json, its validation report exists,
matches provenance and passed (unless ``allow_unvalidated``), and the target repo does not hold another model.

Rule for a repo that already exists ("other content"): ``.gitattributes`` and ``README.md`` never count. If anything
else is there, the repo must hold a ``config.json`` byte-identical to the package's (the same model re-pushed);
otherwise the push is refused, unless ``create_pr`` is set (a pull request proposes the replacement and overwrites
nothing). When the push goes ahead, remote files that are not in the package are deleted in the same commit, so the
branch mirrors the package (stale shards of an earlier push would otherwise linger next to a new index).

Example::

    from tts_awq.publish import PushOptions, push
    result = push(PushOptions(package=Path("darwin-3-awq"), repo_id="you/darwin-3-awq"))
    print(result.commit_url)
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tts_awq.checkpoint.confine import check_upload_tree, confined, is_pickle
from tts_awq.checkpoint.files import sha256_file
from tts_awq.errors import UserError
from tts_awq.formatting import human_bytes
from tts_awq.publish.card import CardResult, build_card, is_repo_id
from tts_awq.publish.package import Package, load_package

log = logging.getLogger(__name__)

CARD_NAME = "README.md"
#: Remote files that never count as "other content" (the Hub creates .gitattributes; README.md is replaced).
NEUTRAL_REMOTE_FILES = frozenset({".gitattributes", CARD_NAME})
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
T = TypeVar("T")


@dataclass
class PushOptions:
    package: Path
    repo_id: str
    private: bool = False
    revision: str | None = None
    create_pr: bool = False
    dry_run: bool = False
    allow_unvalidated: bool = False
    allow_pickle: bool = False  # upload pickle files (pytorch_model.bin, *.pt, ...) that the package holds
    endpoint: str | None = None
    base_model: str | None = None
    token: str | None = None  # default: HF_TOKEN, then huggingface_hub's stored login
    max_attempts: int = 4
    backoff_s: float = 2.0


@dataclass
class PushPlan:
    package: Package
    card: CardResult
    files: list[tuple[str, int]]  # path in repo, size; README.md (the card) included

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def card_text(self) -> str:
        return str(self.card.card.content)

    def render(self, options: PushOptions) -> str:
        target = f"{options.repo_id} ({'pull request on ' if options.create_pr else ''}branch " \
                 f"{options.revision or 'main'}{', private' if options.private else ''})"
        lines = [f"dry run: would push {self.package.root} to {target}; nothing was sent",
                 "validation: passed" if self.package.validated else
                 f"validation: NOT VALIDATED ({self.package.validation_problem}); --allow-unvalidated puts a "
                 "warning on the card",
                 "the target repo was not inspected (a repo holding another model is refused at push time)"]
        lines += [f"warning: {w}" for w in self.card.warnings]
        lines.append(f"files ({len(self.files)}, {human_bytes(self.total_bytes)}):")
        width = max(len(f"{size:,}") for _, size in self.files)
        replaced = CARD_NAME in self.package.files
        for rel, size in self.files:
            note = ""
            if rel == CARD_NAME:
                note = "  (generated model card" + ("; replaces the package's README.md)" if replaced else ")")
            lines.append(f"  {size:>{width},}  {rel}{note}")
        lines.append(f"total: {len(self.files)} files, {self.total_bytes:,} bytes ({human_bytes(self.total_bytes)})")
        lines += [f"----- {CARD_NAME} -----", self.card_text.rstrip("\n"), f"----- end of {CARD_NAME} -----"]
        return "\n".join(lines)


@dataclass
class PushResult:
    plan: PushPlan
    sent: bool = False
    commit_url: str | None = None
    pr_url: str | None = None
    deleted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- plan
def plan_push(options: PushOptions) -> PushPlan:
    """Check the package and build the card; raises UserError (one line) when the push must be refused."""
    if not is_repo_id(options.repo_id):
        raise UserError(f"--repo-id {options.repo_id!r}: expected OWNER/NAME, e.g. you/darwin-3-awq")
    if options.base_model is not None and not is_repo_id(options.base_model):
        raise UserError(f"--base-model {options.base_model!r}: expected a Hub model id OWNER/NAME")
    package = load_package(Path(options.package))
    pickles = [rel for rel in package.files if is_pickle(package.root / rel)]
    if pickles and not options.allow_pickle:
        raise UserError(f"{package.root / pickles[0]}: a pickle file (loading it can run code) in the package; nothing "
                        "was sent: remove it, or pass --allow-pickle to upload it anyway")
    if not package.validated and not options.allow_unvalidated:
        raise UserError(f"{package.root}: {package.validation_problem}; run `validate-awq {package.root} --reference SRC` "
                        "first, or pass --allow-unvalidated to push with a warning on the card")
    card = build_card(package, options.repo_id, base_model=options.base_model)
    card_size = len(card.card.content.encode("utf-8"))
    files = [(rel, package.sizes[rel]) for rel in package.files if rel != CARD_NAME]
    files.append((CARD_NAME, card_size))
    files.sort()
    return PushPlan(package=package, card=card, files=files)


def stage_upload(plan: PushPlan, folder: Path, allow_pickle: bool = False) -> list[tuple[str, int]]:
    """Fill ``folder`` with the package's files (hard links where the filesystem allows, else copies: never
    symbolic links) plus the card, then re-check what is staged (:func:`check_upload_tree`: regular files only,
    nothing outside, no pickle unless ``allow_pickle``, exactly the planned files). Returns what will be sent.
    The package itself is never written."""
    for rel, _ in plan.files:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel == CARD_NAME:
            target.write_text(plan.card_text, encoding="utf-8")
            continue
        source = confined(plan.package.root, rel, "package file")
        try:
            os.link(os.path.realpath(source), target)
        except OSError:
            shutil.copyfile(source, target)
    staged = check_upload_tree(folder, allow_pickle)
    if [rel for rel, _ in staged] != [rel for rel, _ in plan.files]:
        extra = sorted({rel for rel, _ in staged} ^ {rel for rel, _ in plan.files})
        raise UserError(f"{folder}: the staged upload differs from the plan ({', '.join(extra[:3])}); nothing was sent")
    return staged


# --------------------------------------------------------------------------------------------------- remote state
@dataclass
class RemoteState:
    exists: bool
    branch_exists: bool
    sha: str | None = None
    private: bool | None = None
    files: dict[str, Any] = field(default_factory=dict)  # path -> RepoSibling


def git_blob_sha1(path: Path) -> str:
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def inspect_remote(api: Any, repo_id: str, revision: str | None) -> RemoteState:
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        branch_exists = True
    except RevisionNotFoundError:
        # the branch will be created from main, so main's content is what it would hold
        info = api.model_info(repo_id, files_metadata=True)
        branch_exists = False
    except RepositoryNotFoundError as exc:
        if _status(exc) != 404:
            raise
        return RemoteState(exists=False, branch_exists=False)
    files = {s.rfilename: s for s in info.siblings or []}
    return RemoteState(exists=True, branch_exists=branch_exists, sha=info.sha if branch_exists else None,
                       private=info.private, files=files)


def other_content(remote: RemoteState, package_root: Path) -> str | None:
    """Why the remote holds something other than this package (None when it is empty or the same model)."""
    others = sorted(p for p in remote.files if p not in NEUTRAL_REMOTE_FILES)
    if not others:
        return None
    remote_config = remote.files.get("config.json")
    if remote_config is None:
        return f"{len(others)} file(s) but no config.json (e.g. {others[0]})"
    local = package_root / "config.json"
    lfs = getattr(remote_config, "lfs", None)
    same = (lfs.sha256 == sha256_file(local)) if lfs is not None else (remote_config.blob_id == git_blob_sha1(local))
    return None if same else "a config.json that differs from this package's (another model)"


# --------------------------------------------------------------------------------------------------- errors
def _transient(exc: BaseException) -> bool:
    import requests
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, HfHubHTTPError):
        return _status(exc) in RETRY_STATUS
    return isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                            ConnectionError, TimeoutError))


def _server_message(exc: BaseException) -> str:
    text = getattr(exc, "server_message", None) or str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else exc.__class__.__name__


def hub_error(exc: BaseException, options: PushOptions, attempts: int = 1) -> UserError:
    """One line for a failed Hub call (401/403/404 get their own fix)."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    repo = options.repo_id
    status = _status(exc)
    if isinstance(exc, OfflineModeIsEnabled):
        return UserError("HF_HUB_OFFLINE is set; unset it to push")
    if status == 401:
        return UserError(f"{repo}: the Hub rejected the token (HTTP 401 Unauthorized); set HF_TOKEN to a valid write "
                         "token or run `hf auth login`")
    if status == 403:
        owner = repo.split("/")[0]
        return UserError(f"{repo}: this token may not write there (HTTP 403 Forbidden); use a token with write access "
                         f"to '{owner}'")
    if status == 404:
        at = f" at revision {options.revision!r}" if options.revision else ""
        return UserError(f"{repo}: not found{at} (HTTP 404); check --repo-id and --revision")
    if status in RETRY_STATUS:
        return UserError(f"{repo}: the Hub kept failing (HTTP {status}) after {attempts} attempt(s); retry later",
                         exit_code=1)
    if status is not None:
        return UserError(f"{repo}: the Hub refused the push (HTTP {status}: {_server_message(exc)})")
    if isinstance(exc, ValueError) and "README.md" in str(exc):
        return UserError(f"{repo}: the Hub rejected the model card ({' '.join(str(exc).split())})")
    if _transient(exc):
        endpoint = options.endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        return UserError(f"{endpoint}: cannot reach the Hub after {attempts} attempt(s) ({exc.__class__.__name__}); "
                         "check the network or --endpoint", exit_code=1)
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        return UserError(f"{exc.filename}: {exc.strerror or exc}; check the package files", exit_code=1)
    return UserError(f"{repo}: push failed ({exc.__class__.__name__}: {_server_message(exc)})", exit_code=1)


def with_retries(fn: Callable[[], T], options: PushOptions, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``fn``; retry 5xx/429 and connection errors with exponential backoff; map failures to UserError."""
    import requests
    from huggingface_hub.errors import HfHubHTTPError

    attempts = max(1, options.max_attempts)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except UserError:
            raise
        except (HfHubHTTPError, requests.RequestException, OSError, ValueError) as exc:
            if not _transient(exc) or attempt == attempts:
                raise hub_error(exc, options, attempt) from exc
            delay = options.backoff_s * 2 ** (attempt - 1)
            log.warning("transient Hub error (%s); retry %d of %d in %.3g s",
                        _server_message(exc), attempt, attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------------- push
def _token(options: PushOptions) -> str:
    from huggingface_hub import get_token

    token = options.token or get_token()
    if not token:
        raise UserError("no Hugging Face token found; set HF_TOKEN to a write token or run `hf auth login`")
    return token


def _commit_text(plan: PushPlan) -> tuple[str, str]:
    pkg = plan.package
    qcfg = pkg.config.get("quantization_config") or {}
    version = (pkg.provenance.get("tool") or {}).get("version", "")
    message = f"Upload {pkg.root.name}: AWQ INT{qcfg.get('bits')} g{qcfg.get('group_size')} (tts-awq {version})"
    if pkg.provenance.get("stage") == "export":  # an export: name its format
        message = f"Upload {pkg.root.name}: {(pkg.provenance.get('export') or {}).get('format')} export (tts-awq {version})"
    if not pkg.validated:
        message += " [unvalidated]"
    description = "\n".join([
        f"base_model: {plan.card.base_model or 'none (local parent)'}",
        "validation: " + ("passed" if pkg.validated else f"NOT VALIDATED ({pkg.validation_problem})"),
        f"files: {len(plan.files)}, {plan.total_bytes:,} bytes; sha256 of each in provenance.json",
    ])
    return message, description


def _push_once(api: Any, plan: PushPlan, options: PushOptions, folder: Path, result: PushResult) -> None:
    repo_id = options.repo_id
    result.notes.clear()
    remote = inspect_remote(api, repo_id, options.revision)
    if not remote.exists:
        if options.create_pr:
            raise UserError(f"{repo_id}: does not exist, so there is nothing to open a pull request on; drop --create-pr")
        api.create_repo(repo_id, private=options.private, exist_ok=True, repo_type="model")
        result.notes.append(f"created {'private' if options.private else 'public'} repo {repo_id}")
    else:
        problem = other_content(remote, plan.package.root)
        if problem and not options.create_pr:
            raise UserError(f"{repo_id}: already holds other content ({problem}); push to a new --repo-id, or pass "
                            "--create-pr to propose the replacement as a pull request")
        if options.private and remote.private is False:
            result.notes.append(f"--private ignored: {repo_id} already exists and is public (change it in its settings)")
    if options.revision and not remote.branch_exists:
        if options.create_pr:
            raise UserError(f"{repo_id}: branch {options.revision!r} does not exist; a pull request needs an existing "
                            "target branch")
        api.create_branch(repo_id, branch=options.revision, exist_ok=True)
        result.notes.append(f"created branch {options.revision}")
    uploading = {rel for rel, _ in plan.files}
    stale = sorted(p for p in remote.files if p not in uploading and p != ".gitattributes")
    message, description = _commit_text(plan)
    info = api.upload_folder(
        repo_id=repo_id, folder_path=folder, repo_type="model", revision=options.revision,
        create_pr=options.create_pr or None, commit_message=message, commit_description=description,
        parent_commit=remote.sha if (remote.branch_exists and not options.create_pr) else None,
        delete_patterns=[glob.escape(p) for p in stale] or None,
    )
    result.sent = True
    result.deleted = stale
    result.commit_url = getattr(info, "commit_url", None)
    result.pr_url = getattr(info, "pr_url", None)


def push(options: PushOptions, sleep: Callable[[float], None] = time.sleep) -> PushResult:
    """Check, build the card and upload in one commit; ``dry_run`` stops before any network object exists."""
    plan = plan_push(options)
    result = PushResult(plan=plan)
    if options.dry_run:
        return result
    token = _token(options)
    from huggingface_hub import HfApi

    api = HfApi(endpoint=options.endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="tts-awq-push-") as tmp, _default_endpoint(options.endpoint):
        staged = stage_upload(plan, Path(tmp), options.allow_pickle)
        log.info("sending %d files (%s bytes) to %s:", len(staged), f"{sum(n for _, n in staged):,}", options.repo_id)
        for rel, size in staged:
            log.info("  %14s  %s", f"{size:,}", rel)
        with_retries(lambda: _push_once(api, plan, options, Path(tmp), result), options, sleep)
    return result


@contextmanager
def _default_endpoint(endpoint: str | None) -> Iterator[None]:
    """huggingface_hub 0.36 parses the commit URL it gets back against ``constants.ENDPOINT`` (read from HF_ENDPOINT
    at import), not the HfApi's endpoint, so a commit to another endpoint would land and then raise ValueError.
    Point the default at ``endpoint`` for the duration of the push."""
    from huggingface_hub import constants

    if not endpoint or endpoint.rstrip("/") == constants.ENDPOINT:
        yield
        return
    saved = constants.ENDPOINT
    constants.ENDPOINT = endpoint.rstrip("/")
    try:
        yield
    finally:
        constants.ENDPOINT = saved
