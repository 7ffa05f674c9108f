"""tts-awq push: checks, model card, dry run, and an upload against a fake Hub on 127.0.0.1 (nothing leaves loopback)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import pytest
import yaml

from tts_awq.checkpoint.files import hash_tree, list_files, sha256_file, write_json
from tts_awq.cli import build_parser, main
from tts_awq.errors import UserError
from tts_awq.publish import PushOptions, plan_push, push
from tts_awq.publish.card import front_matter

TOKEN = "hf_fake_test_token"
SOURCE = "Qwen/Qwen3-TTS-12Hz-1.7B-Base"
LANGS = {"chinese": 2055, "english": 2050, "german": 2053, "italian": 2070, "portuguese": 2071,
         "spanish": 2054, "japanese": 2058, "korean": 2064, "french": 2061, "russian": 2069}
QCFG = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": ["code_predictor", "codec_head", "text_projection"]}


# --------------------------------------------------------------------------------------------------- fake package
def _write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())


def make_package(root: Path, *, source: dict[str, Any] | None = None, readme: str | None = None,
                 report: dict[str, Any] | None = None, validate: bool = True) -> Path:
    """A small hand-made package: config, weights, codec, tokenizer, provenance, validation report and a plot."""
    config = {"model_type": "qwen3_tts", "talker_config": {"codec_language_id": LANGS, "hidden_size": 64},
              "quantization_config": QCFG}
    files: dict[str, str | bytes] = {
        "config.json": json.dumps(config, indent=2),
        "model.safetensors": bytes(range(256)) * 4,
        "speech_tokenizer/config.json": '{"model_type": "qwen3_tts_tokenizer_12hz"}',
        "speech_tokenizer/model.safetensors": b"\x01\x02" * 100,
        "tokenizer_config.json": "{}",
        "vocab.json": '{"a": 0}',
    }
    if readme is None:
        readme = "---\nlicense: apache-2.0\npipeline_tag: text-to-speech\nlibrary_name: qwen-tts\n---\n# Source\n"
    if readme:
        files["README.md"] = readme
    _write(root, files)
    src = source or {"role": "source", "spec": SOURCE, "repo_id": SOURCE, "revision": "a" * 40,
                     "path": str(root.parent / "no-such-source"), "files_sha256": {}}
    provenance: dict[str, Any] = {
        "tool": {"name": "tts-awq", "version": "0.1.0", "git_commit": "deadbeef"},
        "stage": "quantize-talker",
        "created_unix": 1700000000,
        "parameters": {"group_size": 128, "w_bit": 4, "seed": 1729, "seq_len": 512, "n_samples": 4,
                       "method": "awq", "awq": {"bits": 4, "group_size": 128, "method": "awq",
                                                "duo_scaling": True, "clip": True, "n_grid": 20}},
        "inputs": [src],
        "layout": {"kind": "qwen3_tts", "decoder": "qwen3", "num_layers": 2, "layer_prefix": "talker.model.layers"},
        "calibration": {"name": "builtin:calib_data/calib.jsonl", "sha256": "c" * 64, "n_samples": 4,
                        "n_tokens": 400, "seq_len": 512, "mode": "qwen3-tts voice clone"},
        "modules": {"quantized_count": 14, "kept_count": 30, "modules_to_not_convert": QCFG["modules_to_not_convert"]},
        "libraries": {"python": "3.11", "torch": "2.6.0", "transformers": "4.57.3", "qwen-tts": "0.1.1"},
        "device": "cpu",
        "timings_s": {"calibration": 1.5, "quantize_layers": 2.0},
        "outputs_sha256": hash_tree(root),
    }
    if report is None:
        report = {  # the layout validate-awq writes: gates point into "metrics" by dotted path
            "passed": True, "failed_gates": [],
            "gates": {
                "runaway_count": {"value": 0, "threshold": 0, "op": "<=", "passed": True,
                                  "metric": "freerun.all.runaway_count", "help": "runaways"},
                "median_duration_ratio": {"value": 1.02, "threshold": [0.9, 1.1], "op": "in", "passed": True,
                                          "metric": "freerun.sentence.median_ratio", "help": "duration"},
                "teacher_top1": {"value": 0.973, "threshold": 0.9, "op": ">=", "passed": True,
                                 "metric": "teacher.top1_agreement", "help": "top-1"},
            },
            "metrics": {"freerun": {"all": {"runaway_count": 0}, "sentence": {"median_ratio": 1.02}},
                        "teacher": {"top1_agreement": 0.973, "kl_p95": 0.25},
                        "audio": {"teacher_forced": {"mcd_mean": 4.25}, "asr": None}},
        }
    if validate:
        _write(root, {"validation/report.json": json.dumps(report, indent=2), "validation/report.md": "# report\n",
                      "validation/wer.png": b"\x89PNG\r\n\x1a\nfake"})
        provenance["validation"] = {"report_sha256": sha256_file(root / "validation/report.json"),
                                    "passed": report.get("passed"), "created_unix": 1700000100,
                                    "files": hash_tree(root, [r for r in list_files(root) if r.startswith("validation/")])}
    write_json(root / "provenance.json", provenance)
    return root


def snapshot(root: Path) -> dict[str, str]:
    return hash_tree(root)


def card_meta(text: str, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "card.md"
    path.write_text(text, encoding="utf-8")
    meta = front_matter(path)
    assert meta is not None
    return meta


# --------------------------------------------------------------------------------------------------- network guard
@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch):
    """Refuse (and record) any connection that is not to 127.0.0.1 / ::1; make the Hub client talk plain HTTP."""
    attempts: list[Any] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(address: Any) -> bool:
        if isinstance(address, (str, bytes)):  # AF_UNIX never leaves the machine
            return True
        return address[0] in {"127.0.0.1", "::1"}

    def connect(self: socket.socket, address: Any) -> None:
        if not allowed(address):
            attempts.append(address)
            raise OSError(f"test guard: connection to {address!r} refused")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not allowed(address):
            attempts.append(address)
            raise OSError(f"test guard: connection to {address!r} refused")
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants as hf_constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    yield attempts
    reset_sessions()
    assert attempts == [], f"non-loopback connections attempted: {attempts}"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch):
    """Stricter: no connection at all, and no HfApi may even be constructed."""
    import huggingface_hub

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network object constructed during a dry run")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "__init__", refuse)


# --------------------------------------------------------------------------------------------------- fake Hub
class FakeHub:
    """Just enough of the Hub API that HfApi.model_info / create_repo / create_branch / upload_folder use."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.commits: list[dict[str, Any]] = []
        self.validated_cards: list[str] = []
        self.fail_status: int | None = None  # answer every request with this status
        self.commit_failures: list[int] = []  # statuses for the next commit requests
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def add_repo(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> None:
        self.repos[repo_id] = {"private": private, "branches": {"main": {".gitattributes": b"*.bin filter=lfs\n",
                                                                        **files}}, "n": 0}

    def sha(self, repo_id: str, branch: str = "main") -> str:
        repo = self.repos[repo_id]
        return hashlib.sha1(f"{repo_id}@{branch}#{repo['n']}".encode()).hexdigest()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlparse(self.path)
                query = parse_qs(url.query)
                hub.requests.append({"method": method, "path": url.path, "query": query, "body": body,
                                     "auth": self.headers.get("Authorization")})
                if hub.fail_status is not None:
                    return self._send(hub.fail_status, {"error": "Invalid credentials in Authorization header"},
                                      {"X-Error-Message": "Invalid credentials in Authorization header"})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, {"error": "no token"})
                parts = [unquote(p) for p in url.path.split("/")]
                if url.path == "/api/validate-yaml":
                    hub.validated_cards.append(json.loads(body)["content"])
                    return self._send(200, {"errors": [], "warnings": []})
                if url.path == "/api/repos/create":
                    payload = json.loads(body)
                    repo_id = f"{payload['organization'] or 'you'}/{payload['name']}" if "/" not in payload["name"] \
                        else payload["name"]
                    if repo_id in hub.repos:
                        return self._send(409, {"error": "You already created this model repo"})
                    hub.add_repo(repo_id, {}, private=bool(payload.get("private")))
                    return self._send(200, {"url": f"{hub.url}/{repo_id}"})
                if len(parts) < 5 or parts[1:3] != ["api", "models"]:
                    return self._send(404, {"error": "unknown endpoint"})
                repo_id = f"{parts[3]}/{parts[4]}"
                action, rest = (parts[5] if len(parts) > 5 else ""), parts[6:]
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                branch = rest[0] if rest else "main"
                if action == "branch" and method == "POST":
                    repo["branches"][branch] = dict(repo["branches"]["main"])
                    return self._send(200, {})
                files = repo["branches"].get(branch)
                if files is None:
                    return self._send(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
                if action in {"", "revision"} and method == "GET":
                    siblings = [{"rfilename": p, "size": len(d),
                                 "blobId": hashlib.sha1(b"blob %d\0" % len(d) + d).hexdigest()}
                                for p, d in sorted(files.items())]
                    return self._send(200, {"id": repo_id, "sha": hub.sha(repo_id, branch), "private": repo["private"],
                                            "siblings": siblings})
                if action == "tree" and method == "GET":
                    return self._send(200, [{"type": "file", "path": p, "size": len(d), "oid": "0" * 40}
                                            for p, d in sorted(files.items())])
                if action == "preupload" and method == "POST":
                    answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                              for f in json.loads(body)["files"]]
                    return self._send(200, {"files": answer})
                if action == "commit" and method == "POST":
                    if hub.commit_failures:
                        return self._send(hub.commit_failures.pop(0), {"error": "try again"})
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    header = lines[0]["value"]
                    if header.get("parentCommit") and header["parentCommit"] != hub.sha(repo_id, branch):
                        return self._send(412, {"error": "parent commit moved"})
                    pr = query.get("create_pr") == ["1"]
                    target = dict(files)
                    for line in lines[1:]:
                        if line["key"] == "file":
                            target[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                        elif line["key"] == "deletedFile":
                            target.pop(line["value"]["path"], None)
                        else:
                            return self._send(400, {"error": f"unsupported {line['key']}"})
                    hub.commits.append({"repo_id": repo_id, "branch": branch, "header": header, "pr": pr,
                                        "ops": lines[1:], "files": target})
                    if not pr:
                        repo["branches"][branch] = target
                        repo["n"] += 1
                    return self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{hub.sha(repo_id, branch)}",
                                            "commitOid": hub.sha(repo_id, branch),
                                            "pullRequestUrl": f"{hub.url}/{repo_id}/discussions/1" if pr else None})
                return self._send(404, {"error": f"unknown endpoint {method} {url.path}"})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        return Handler

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


def _push(pkg: Path, hub: FakeHub, *extra: str) -> int:
    return main(["push", str(pkg), "--repo-id", "you/darwin-3-awq", "--endpoint", hub.url, *extra])


# --------------------------------------------------------------------------------------------------- card
def test_card_front_matter_and_body(tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "pkg")
    plan = plan_push(PushOptions(package=pkg, repo_id="you/darwin-3-awq", dry_run=True))
    text = plan.card_text
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n", 2)[1])
    assert meta == card_meta(text, tmp_path)
    assert meta["base_model"] == SOURCE
    assert meta["base_model_relation"] == "quantized"
    assert meta["library_name"] == "tts-awq"
    assert meta["pipeline_tag"] == "text-to-speech"
    assert meta["license"] == "apache-2.0"
    assert set(meta["language"]) == {"zh", "en", "de", "it", "pt", "es", "ja", "ko", "fr", "ru"}
    assert {"awq", "int4", "quantized", "qwen3-tts", "text-to-speech"} <= set(meta["tags"])
    assert "unvalidated" not in meta["tags"]
    body = text.split("---\n", 2)[2]
    assert "Not validated" not in body
    assert "| `runaway_count` | 0 | <= 0 | pass | runaways |" in body
    assert "| `median_duration_ratio` | 1.02 | in [0.9, 1.1] | pass | duration |" in body
    assert "| `kl_p95` | 0.25 | off |" in body  # measured, gate off
    assert "| `mel_cepstral_distortion` | 4.25 | off |" in body
    assert "| `wer_increase` | not measured | off |" in body  # null / absent (no ASR model)
    assert "| `speaker_similarity_drop` | not measured | off |" in body
    assert "KL(reference \\|\\| package)" in body  # pipes in help text are escaped
    assert "![wer](validation/wer.png)" in body
    assert "tts_awq.load_quantized(\"you/darwin-3-awq\"" in body and "autoawq" in body
    assert f"[{SOURCE}](https://huggingface.co/{SOURCE})" in body
    assert '"group_size": 128' in body  # quantization_config restated
    assert "arXiv:2306.00978" in body


def test_card_local_parent_license_from_ancestors(tmp_path: Path) -> None:
    tts_dir, llm_dir = tmp_path / "tts", tmp_path / "llm"
    _write(tts_dir, {"README.md": "---\nlicense: apache-2.0\n---\n"})
    _write(llm_dir, {"README.md": "---\nlicense: apache-2.0\n---\n"})
    parent = {"stage": "blend", "tool": {"name": "tts-awq", "version": "0.1.0"}, "parameters": {"alpha": 0.03},
              "inputs": [{"role": "tts", "spec": SOURCE, "repo_id": SOURCE, "path": str(tts_dir)},
                         {"role": "llm", "spec": "Qwen/Qwen3-1.7B", "repo_id": "Qwen/Qwen3-1.7B", "path": str(llm_dir)}]}
    source = {"role": "source", "spec": "darwin-3", "path": str(tmp_path / "darwin-3"), "repo_id": None,
              "revision": None, "files_sha256": {}, "provenance": parent}
    pkg = make_package(tmp_path / "pkg", source=source, readme="")
    plan = plan_push(PushOptions(package=pkg, repo_id="you/darwin-3-awq"))
    meta = card_meta(plan.card_text, tmp_path)
    assert "base_model" not in meta and "base_model_relation" not in meta
    assert any("local directory" in w and "--base-model" in w for w in plan.card.warnings)
    assert meta["license"] == "apache-2.0"
    assert "inherited from" in plan.card_text and "alpha=0.03" in plan.card_text
    assert "Darwin-TTS" in plan.card_text and "Qwen/Qwen3-1.7B" in plan.card_text

    plan = plan_push(PushOptions(package=pkg, repo_id="you/darwin-3-awq", base_model="you/darwin-3"))
    meta = card_meta(plan.card_text, tmp_path)
    assert meta["base_model"] == "you/darwin-3" and meta["base_model_relation"] == "quantized"


def test_card_license_other_when_none_found(tmp_path: Path) -> None:
    pkg = make_package(tmp_path / "pkg", readme="")
    plan = plan_push(PushOptions(package=pkg, repo_id="you/x"))
    assert card_meta(plan.card_text, tmp_path)["license"] == "other"
    assert "No license was found" in plan.card_text
    assert any(w.startswith("license: other") for w in plan.card.warnings)


# --------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("case", ["missing", "failed", "edited"])
def test_refuses_unvalidated(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_network: None, case: str) -> None:
    if case == "missing":
        pkg = make_package(tmp_path / "pkg", validate=False)
        reason = "no validation report"
    elif case == "failed":
        pkg = make_package(tmp_path / "pkg", report={"passed": False, "failed_gates": ["runaway_count", "kl_mean"],
                                                     "gates": {
            "runaway_count": {"value": 3, "threshold": 0, "op": "<=", "passed": False},
            "kl_mean": {"value": None, "threshold": 0.1, "op": "<=", "passed": False, "note": "not measured"}}})
        reason = "validation failed (gates: runaway_count, kl_mean)"
    else:
        pkg = make_package(tmp_path / "pkg")
        report = pkg / "validation/report.json"
        report.write_text(report.read_text().replace('"passed": true', '"passed":  true'))
        reason = "does not match provenance.json's report_sha256"
    before = snapshot(pkg)
    assert main(["push", str(pkg), "--repo-id", "you/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and reason in err and "--allow-unvalidated" in err

    assert main(["push", str(pkg), "--repo-id", "you/x", "--dry-run", "--allow-unvalidated"]) == 0
    out = capsys.readouterr().out
    assert "validation: NOT VALIDATED" in out
    assert "> [!WARNING]" in out and "**Not validated.**" in out and reason in out
    assert "- unvalidated" in out
    if case == "failed":
        assert "| `runaway_count` | 3 | <= 0 | **FAIL** |" in out
        assert "| `kl_mean` | not measured | <= 0.1 | **FAIL** (not measured) |" in out
    else:
        assert "No trusted validation report" in out
    assert snapshot(pkg) == before


@pytest.mark.parametrize("change", ["edit", "delete", "add"])
def test_refuses_changed_package(tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str) -> None:
    pkg = make_package(tmp_path / "pkg")
    target = pkg / "speech_tokenizer/config.json"
    if change == "edit":
        target.write_text('{"model_type": "other"}')
    elif change == "delete":
        target.unlink()
    else:
        target = pkg / "notes.txt"
        target.write_text("mine")
    assert main(["push", str(pkg), "--repo-id", "you/x", "--dry-run", "--allow-unvalidated"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(target) in err


def test_bad_repo_id_and_missing_provenance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = make_package(tmp_path / "pkg")
    assert main(["push", str(pkg), "--repo-id", "no-owner", "--dry-run"]) == 2
    assert "OWNER/NAME" in capsys.readouterr().err
    (pkg / "provenance.json").unlink()
    with pytest.raises(UserError, match="provenance.json: not found"):
        plan_push(PushOptions(package=pkg, repo_id="you/x"))


# --------------------------------------------------------------------------------------------------- dry run
def test_dry_run_prints_files_size_and_card(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            no_network: None) -> None:
    pkg = make_package(tmp_path / "pkg")
    before = snapshot(pkg)
    assert main(["push", str(pkg), "--repo-id", "you/darwin-3-awq", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "nothing was sent" in out and "validation: passed" in out
    listing = out.split("----- README.md -----")[0]
    listed = [line.split()[1] for line in listing.splitlines() if line.startswith("  ")]
    expected = sorted(set(before) | {"provenance.json", "README.md"})
    assert listed == expected
    assert "README.md  (generated model card; replaces the package's README.md)" in out
    total = sum((pkg / rel).stat().st_size for rel in before if rel != "README.md")
    card = out.split("----- README.md -----\n", 1)[1].split("\n----- end of README.md -----", 1)[0]
    total += len((card + "\n").encode())
    assert f"total: {len(expected)} files, {total:,} bytes" in out
    assert yaml.safe_load(card.split("---\n", 2)[1])["base_model"] == SOURCE
    assert snapshot(pkg) == before


# --------------------------------------------------------------------------------------------------- upload
def test_upload_one_commit_to_local_hub(tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = make_package(tmp_path / "pkg")
    before = snapshot(pkg)
    assert _push(pkg, hub, "--private") == 0
    out = capsys.readouterr().out
    assert len(hub.commits) == 1
    commit = hub.commits[0]
    assert commit["repo_id"] == "you/darwin-3-awq" and commit["branch"] == "main" and not commit["pr"]
    landed = commit["files"]
    assert set(landed) == set(before) | {"provenance.json", ".gitattributes"}
    for rel in before:
        if rel != "README.md":
            assert landed[rel] == (pkg / rel).read_bytes(), rel
    card = landed["README.md"].decode()
    meta = card_meta(card, tmp_path)
    assert meta["base_model"] == SOURCE and meta["base_model_relation"] == "quantized"
    assert hub.validated_cards and hub.validated_cards[-1] == card
    assert "AWQ INT4 g128" in commit["header"]["summary"]
    assert hub.repos["you/darwin-3-awq"]["private"] is True
    paths = [(r["method"], r["path"]) for r in hub.requests]
    assert ("POST", "/api/repos/create") in paths
    assert ("POST", "/api/models/you/darwin-3-awq/preupload/main") in paths
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in hub.requests)
    assert f"{hub.url}/you/darwin-3-awq/commit/" in out
    assert snapshot(pkg) == before


def test_repush_same_model_replaces_stale_files(tmp_path: Path, hub: FakeHub) -> None:
    pkg = make_package(tmp_path / "pkg")
    hub.add_repo("you/darwin-3-awq", {"config.json": (pkg / "config.json").read_bytes(),
                                      "model-00001-of-00002.safetensors": b"old", "README.md": b"old card"})
    sha = hub.sha("you/darwin-3-awq")
    assert _push(pkg, hub) == 0
    commit = hub.commits[0]
    assert commit["header"]["parentCommit"] == sha
    assert {"key": "deletedFile", "value": {"path": "model-00001-of-00002.safetensors"}} in commit["ops"]
    assert "model-00001-of-00002.safetensors" not in commit["files"]
    assert commit["files"]["README.md"] != b"old card"


def test_refuses_repo_with_other_model(tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = make_package(tmp_path / "pkg")
    hub.add_repo("you/darwin-3-awq", {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"x"})
    assert _push(pkg, hub) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds other content" in err and "--create-pr" in err
    assert hub.commits == []

    assert _push(pkg, hub, "--create-pr") == 0
    assert len(hub.commits) == 1 and hub.commits[0]["pr"]
    assert hub.repos["you/darwin-3-awq"]["branches"]["main"]["config.json"] == b'{"model_type": "llama"}'
    assert f"{hub.url}/you/darwin-3-awq/discussions/1" in capsys.readouterr().out


def test_revision_branch_is_created(tmp_path: Path, hub: FakeHub) -> None:
    pkg = make_package(tmp_path / "pkg")
    assert _push(pkg, hub, "--revision", "int4-g128") == 0
    assert hub.commits[0]["branch"] == "int4-g128"
    assert ("POST", "/api/models/you/darwin-3-awq/branch/int4-g128") in [(r["method"], r["path"]) for r in hub.requests]


def test_auth_failure_is_one_line(tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = make_package(tmp_path / "pkg")
    hub.fail_status = 401
    assert _push(pkg, hub) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "HTTP 401" in err and "HF_TOKEN" in err
    assert hub.commits == [] and len(hub.requests) == 1  # no retry on 401


@pytest.mark.parametrize("status, message", [(403, "HTTP 403"), (404, "HTTP 404")])
def test_forbidden_and_not_found(tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str],
                                 status: int, message: str) -> None:
    hub.fail_status = status
    assert _push(make_package(tmp_path / "pkg"), hub) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_transient_errors_are_retried(tmp_path: Path, hub: FakeHub) -> None:
    pkg = make_package(tmp_path / "pkg")
    hub.commit_failures = [503, 502]
    sleeps: list[float] = []
    options = PushOptions(package=pkg, repo_id="you/darwin-3-awq", endpoint=hub.url, backoff_s=0.5)
    result = push(options, sleep=sleeps.append)
    assert result.sent and len(hub.commits) == 1 and sleeps == [0.5, 1.0]

    hub.commit_failures = [503] * 10
    hub.repos.clear()
    with pytest.raises(UserError, match="kept failing") as info:
        push(PushOptions(package=pkg, repo_id="you/darwin-3-awq", endpoint=hub.url, max_attempts=3),
             sleep=sleeps.append)
    assert info.value.exit_code == 1


def test_no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["push", str(make_package(tmp_path / "pkg")), "--repo-id", "you/x"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err


def test_push_is_registered_in_cli() -> None:
    args = build_parser().parse_args(["push", "out", "--repo-id", "you/x", "--dry-run", "--allow-unvalidated"])
    assert args.dry_run and args.allow_unvalidated and args.repo_id == "you/x" and callable(args.func)


def test_push_refuses_a_file_under_validation_that_validate_awq_did_not_write(tmp_path: Path) -> None:
    root = make_package(tmp_path / "pkg")
    (root / "validation" / "extra.bin").write_bytes(b"not from validate-awq")
    for allow in (False, True):  # integrity: --allow-unvalidated does not lift it
        with pytest.raises(UserError, match="extra.bin: not written by validate-awq"):
            plan_push(PushOptions(package=root, repo_id="you/pkg", allow_unvalidated=allow, dry_run=True))
    (root / "validation" / "extra.bin").unlink()
    (root / "validation" / "report.md").write_text("# edited\n")
    with pytest.raises(UserError, match="report.md: changed after validate-awq"):
        plan_push(PushOptions(package=root, repo_id="you/pkg", dry_run=True))
