"""The checkpoint file format: one safetensors file per artifact. Write, read, validate.

Tensor keys (``<group>/<name>``):

==================  =====================================  ==========================================
key                 stored as                              present in
==================  =====================================  ==========================================
``probs/<module>``  float32, the weight's shape            bernoulli globals
``mask/<module>``   uint8, 8 weights per byte (``packed``)  threshold globals; bernoulli/threshold
                    or one per weight (``none``)           client uploads
``code/<module>``   uint8 stream coded against the global:  client uploads coded against their global
                    ANS (``coded``) or surprises (``sparse``)
``scale/<module>``  float32, (out_features,)               scaling globals and uploads
``head/<param>``    float32, the parameter's shape          every file
``opt_m/<key>``     float32, the shape of global ``<key>``  globals of server optimizers with state:
``opt_v/<key>``                                            momentum (m), adam and yogi (m, v)
``beta_a/<key>``    float32, the shape of ``probs/<module>``  bernoulli globals of ``aggregator: bayes``
``beta_b/<key>``                                           (the Beta posterior's α, β)
``masked/<key>``    uint8, k-bit words packed end to end    masked client uploads (secure aggregation;
                    (``secagg.packing``)                    ``<key>`` a plaintext upload key, k per key
                                                           in ``secure_aggregation.bits``)
==================  =====================================  ==========================================

``<key>`` is a global tensor's own key: ``opt_m/probs/<module>``, ``opt_m/head/<param>``,
``beta_a/probs/<module>``. Which of these groups a global holds is listed in its metadata
(``server_state``); client files never hold them.

The safetensors header's ``__metadata__`` holds one key, ``supermask``: a JSON object
validated by :class:`FileMeta`. Nothing is ever unpickled; every size, key, dtype, shape and
value is checked before use.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch
from pydantic import ValidationError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .. import coding, storage
from ..errors import CheckpointError, SupermaskError
from ..mask.kinds import kind_of
from .meta import (  # noqa: F401  (the schema and constants are part of this module's API)
    BAYES_GROUPS, CODED_ENCODINGS, FLIP_RATE_RANGE, FORMAT_NAME, FORMAT_VERSION, GROUPS,
    MAX_ENTRIES, MAX_FILE_BYTES, MAX_HEADER_BYTES, META_KEY, OPT_GROUPS, STATE_GROUPS,
    AggregationMeta, BaseModelMeta, Checkpoint, ClientPrivacy, ClientRecord, DroppedRecord,
    FileMeta, PoolMeta, PrivacyRelease, RunPrivacy, SecureUpload, TargetMeta,
)
from ..secagg.packing import packed_bytes
from ..secagg.prg import MAX_BITS as MAX_MASKED_BITS


def global_key(client_key: str, kind: str) -> str:
    """The global tensor a client tensor aggregates into: a bernoulli client's ``mask/<module>``
    becomes the global's ``probs/<module>``; every other key keeps its name."""
    group, _, name = client_key.partition("/")
    spec = kind_of(kind)
    return f"{spec.global_group}/{name}" if group == spec.payload else client_key


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reference_probs(meta: FileMeta, name: str, reference: Checkpoint) -> torch.Tensor:
    """The probabilities a client mask of module ``name`` is coded against, from its global."""
    spec = kind_of(meta.kind)
    rate = min(max(meta.coding_flip_rate or 0.0, FLIP_RATE_RANGE[0]), FLIP_RATE_RANGE[1])
    return spec.coded_probs(reference.tensors[f"{spec.global_group}/{name}"], rate)


def reference_plan(reference: Checkpoint, name: str) -> coding.SparsePlan:
    """The plan that ``sparse`` masks of module ``name`` are coded with: computed once per global.

    It depends on the global alone (threshold: its mask, as if the flip rate were the minimum)."""
    plans = reference._sparse_plans
    if name not in plans:
        plans[name] = coding.sparse_plan(reference_probs(reference.meta, name, reference))
    return plans[name]


def state_groups(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The server-state groups present among a global's tensors (``FileMeta.server_state``)."""
    present = {key.partition("/")[0] for key in tensors}
    return [group for group in STATE_GROUPS if group in present]


def plaintext_shapes(meta: FileMeta) -> dict[str, tuple[int, ...]]:
    """The decoded upload tensors of a client of this run: key -> shape (what a masked upload masks)."""
    spec = kind_of(meta.kind)
    out: dict[str, tuple[int, ...]] = {}
    for name, target in meta.targets.items():
        out[f"{spec.payload}/{name}"] = tuple(target.shape) if spec.binary else (target.out_features,)
    for name, shape in meta.head.items():
        out[f"head/{name}"] = tuple(shape)
    return out


def _expected_groups(meta: FileMeta) -> tuple[str, ...]:
    spec = kind_of(meta.kind)
    if meta.encoding == "masked":
        return ("masked",)
    if meta.role == "global":
        return (spec.global_group, "head")
    if not spec.binary:
        return (spec.payload, "head")
    return ("code" if meta.encoding in CODED_ENCODINGS else "mask", "head")


def _expected_encoding(meta: FileMeta) -> set[str]:
    spec = kind_of(meta.kind)
    return {spec.global_encoding} if meta.role == "global" else set(spec.upload_encodings) | {"masked"}


def encode_tensors(
    meta: FileMeta, tensors: dict[str, torch.Tensor], reference: Checkpoint | None
) -> dict[str, torch.Tensor]:
    """Decoded tensors -> the tensors stored in the file, per ``meta.encoding``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        group, _, name = key.partition("/")
        if group == "masked":
            out[key] = value.contiguous().cpu()
        elif group != "mask":
            out[key] = value.detach().float().contiguous().cpu()
        elif meta.encoding == "packed":
            out[key] = coding.pack_bits(value)
        elif meta.encoding == "none":
            out[key] = value.to(torch.uint8).contiguous().cpu()
        else:
            if reference is None:
                raise SupermaskError("a coded mask needs the global it is coded against")
            if meta.encoding == "sparse":
                blob = coding.encode_sparse(value, reference_plan(reference, name))
            else:
                blob = coding.encode_mask(value, reference_probs(meta, name, reference))
            # An ANS stream may be empty (a mask of all zeros): frombuffer refuses empty buffers.
            out[f"code/{name}"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    return out


def payload_bits(stored: dict[str, torch.Tensor]) -> int:
    """Bits of the mask payload: probs, mask, code and scale tensors (not the head)."""
    return sum(
        t.numel() * t.element_size() * 8
        for k, t in stored.items()
        if k.split("/", 1)[0] in ("probs", "mask", "code", "scale")
        or (k.startswith("masked/") and k.split("/", 2)[1] != "head")
    )


def serialize(meta: FileMeta, stored: dict[str, torch.Tensor]) -> bytes:
    """Bytes of a safetensors file holding ``stored`` with ``meta`` in its header (deterministic)."""
    dumped = meta.model_dump(mode="json", exclude={"privacy"} if meta.privacy is None else None)
    text = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    ordered = {k: stored[k] for k in sorted(stored)}
    return st_save(ordered, metadata={META_KEY: text})


def save_checkpoint(path: str, meta: FileMeta, stored: dict[str, torch.Tensor], *, force: bool = False) -> str:
    """Atomically write a checkpoint of already-encoded tensors; returns the file's digest."""
    data = serialize(meta, stored)
    storage.write_atomic(path, data, force=force)
    return file_digest(data)


def _fail(path: str, reason: str) -> CheckpointError:
    return CheckpointError(f"{path}: {reason}")


def parse_header(data: bytes, path: str) -> tuple[dict, int]:
    """Check and parse the safetensors header before anything else touches the bytes."""
    if len(data) < 8:
        raise _fail(path, "not a safetensors file (too short; an empty or truncated upload?)")
    length = int.from_bytes(data[:8], "little")
    if length > MAX_HEADER_BYTES:
        raise _fail(path, f"not a safetensors file (header claims {length} bytes, limit {MAX_HEADER_BYTES})")
    if 8 + length > len(data):
        raise _fail(path, "truncated (header runs past the end of the file)")
    try:
        header = json.loads(data[8 : 8 + length])
    except (ValueError, RecursionError):  # also huge integers and deeply nested arrays
        raise _fail(path, "not a safetensors file (header is not JSON; a pickle or another format?)") from None
    if not isinstance(header, dict):
        raise _fail(path, "not a safetensors file (header is not a JSON object)")
    if len(header) > MAX_ENTRIES:
        raise _fail(path, f"header lists {len(header)} entries, limit {MAX_ENTRIES}")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise _fail(path, f"tensor {key!r} has malformed offsets")
        end = max(end, offsets[1])
    if 8 + length + end != len(data):
        raise _fail(path, f"truncated or padded: tensors need {8 + length + end} bytes, file has {len(data)}")
    return header, length


def parse_meta(header: dict, path: str) -> FileMeta:
    raw = header.get("__metadata__")
    if not isinstance(raw, dict) or META_KEY not in raw:
        raise _fail(path, "not a supermask checkpoint (no 'supermask' metadata in the safetensors header)")
    try:
        meta = FileMeta.model_validate_json(raw[META_KEY])
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "metadata"
        where = where.encode("unicode_escape").decode("ascii")[:200]  # a key is the uploader's text: one line
        raise _fail(path, f"bad metadata field '{where}': {err['msg']}") from None
    if meta.format_version != FORMAT_VERSION:
        raise _fail(path, f"format version {meta.format_version}; this supermask reads version {FORMAT_VERSION}")
    if meta.encoding not in _expected_encoding(meta):
        raise _fail(path, f"encoding {meta.encoding!r} is not valid for a {meta.kind} {meta.role} file")
    if (meta.role == "client") != (meta.client is not None):
        raise _fail(path, "metadata 'client' must be set for client files and only for them")
    if meta.encoding == "coded" and kind_of(meta.kind).coded_with_flip_rate and meta.coding_flip_rate is None:
        raise _fail(path, f"coded {meta.kind} file lacks 'coding_flip_rate'")
    if meta.encoding == "sparse" and meta.coding_flip_rate is not None:
        raise _fail(path, "sparse file must not set 'coding_flip_rate'")
    if meta.coding_flip_rate is not None and not math.isfinite(meta.coding_flip_rate):
        raise _fail(path, "metadata 'coding_flip_rate' is not a finite number")
    if meta.server_state and meta.role == "client":
        raise _fail(path, "metadata 'server_state' must be empty in a client file")
    if len(set(meta.server_state)) != len(meta.server_state):
        raise _fail(path, "metadata 'server_state' lists a group twice")
    if not kind_of(meta.kind).probabilistic and set(meta.server_state) & set(BAYES_GROUPS):
        raise _fail(path, "metadata 'server_state' holds a Beta posterior, which only bernoulli globals have")
    if (meta.encoding == "masked") != (meta.secure_aggregation is not None):
        raise _fail(path, "metadata 'secure_aggregation' must be set for masked uploads and only for them")
    if meta.secure_aggregation is not None:
        record = meta.secure_aggregation
        if set(record.bits) != set(plaintext_shapes(meta)):
            raise _fail(path, "metadata 'secure_aggregation.bits' must name every upload tensor of this run")
        if not all(1 <= k <= MAX_MASKED_BITS for k in record.bits.values()):
            raise _fail(path, f"metadata 'secure_aggregation.bits' outside 1..{MAX_MASKED_BITS}")
        if record.weight > record.total_weight or len(set(record.peers)) != len(record.peers) or meta.client in record.peers:
            raise _fail(path, "metadata 'secure_aggregation': weight above the total, or peers repeated or including the client")
    return meta


def _expected_spec(meta: FileMeta) -> dict[str, tuple[torch.dtype, tuple[int, ...] | None]]:
    """Every key the file must hold with its dtype and shape (None: 1-D of any length)."""
    spec: dict[str, tuple[torch.dtype, tuple[int, ...] | None]] = {}
    if meta.secure_aggregation is not None:
        for key, shape in plaintext_shapes(meta).items():
            spec[f"masked/{key}"] = (torch.uint8, (packed_bytes(math.prod(shape), meta.secure_aggregation.bits[key]),))
        return spec
    groups = _expected_groups(meta)
    for name, target in meta.targets.items():
        numel = math.prod(target.shape)
        if "probs" in groups:
            spec[f"probs/{name}"] = (torch.float32, tuple(target.shape))
        if "scale" in groups:
            spec[f"scale/{name}"] = (torch.float32, (target.out_features,))
        if "mask" in groups:
            shape = (math.ceil(numel / 8),) if meta.encoding == "packed" else tuple(target.shape)
            spec[f"mask/{name}"] = (torch.uint8, shape)
        if "code" in groups:
            spec[f"code/{name}"] = (torch.uint8, None)
    for name, shape in meta.head.items():
        spec[f"head/{name}"] = (torch.float32, tuple(shape))
    for group in meta.server_state:
        # optimizer moments for every float tensor (threshold masks are votes, never stepped);
        # the Beta posterior for bernoulli probs
        bases = ("probs",) if group in BAYES_GROUPS else ("probs", "scale", "head")
        for key, (dtype, shape) in list(spec.items()):
            if key.partition("/")[0] in bases:
                spec[f"{group}/{key}"] = (dtype, shape)
    return spec


def _check_tensors(meta: FileMeta, header: dict, path: str) -> None:
    spec = _expected_spec(meta)
    present = {k for k in header if k != "__metadata__"}
    missing = sorted(set(spec) - present)
    extra = sorted(present - set(spec))
    if missing:
        raise _fail(path, f"missing tensor {missing[0]!r} ({len(missing)} missing)")
    if extra:
        raise _fail(path, f"unexpected tensor {extra[0]!r} (a mask file never holds base weights)")
    dtype_names = {torch.float32: "F32", torch.uint8: "U8"}
    for key, (dtype, shape) in spec.items():
        entry = header[key]
        if entry.get("dtype") != dtype_names[dtype]:
            raise _fail(path, f"tensor {key!r} has dtype {entry.get('dtype')}, expected {dtype_names[dtype]}")
        got = entry.get("shape")
        if not (isinstance(got, list) and all(isinstance(d, int) for d in got)):
            raise _fail(path, f"tensor {key!r} has a malformed shape")
        got = tuple(got)
        if shape is None:
            if len(got) != 1:
                raise _fail(path, f"tensor {key!r} must be 1-D")
        elif got != shape:
            raise _fail(path, f"tensor {key!r} has shape {list(got)}, expected {list(shape)}")


def decode_stored(
    meta: FileMeta, stored: dict[str, torch.Tensor], reference: Checkpoint | None, path: str
) -> dict[str, torch.Tensor]:
    """Stored tensors of a file -> its decoded tensors (the inverse of :func:`encode_tensors`)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in stored.items():
        group, _, name = key.partition("/")
        if group == "masked":  # uniform words: nothing to check but the length (done); unpacked by the server
            out[key] = value
        elif group in ("probs", "scale", "head") or group in STATE_GROUPS:
            if not torch.isfinite(value).all():
                raise _fail(path, f"tensor {key!r} holds NaN or Inf")
            if group == "probs" and ((value < 0) | (value > 1)).any():
                raise _fail(path, f"tensor {key!r} holds probabilities outside [0, 1]")
            if group == "opt_v" and (value < 0).any():
                raise _fail(path, f"tensor {key!r} holds a negative second moment")
            if group in BAYES_GROUPS and (value <= 0).any():
                raise _fail(path, f"tensor {key!r} holds a Beta parameter that is not positive")
            out[key] = value
        elif group == "mask":
            shape = meta.targets[name].shape
            if meta.encoding == "packed":
                try:
                    out[key] = coding.unpack_bits(value, shape)
                except CheckpointError as exc:
                    raise _fail(path, f"tensor {key!r} does not unpack: {exc}") from None
            else:
                if (value > 1).any():
                    raise _fail(path, f"tensor {key!r} holds values other than 0 and 1")
                out[key] = value.bool()
        else:
            if reference is None:
                raise _fail(path, "is entropy-coded; decoding it needs the global it was coded against")
            blob = value.numpy().tobytes()
            try:
                if meta.encoding == "sparse":
                    out[f"mask/{name}"] = coding.decode_sparse(blob, reference_plan(reference, name))
                else:
                    out[f"mask/{name}"] = coding.decode_mask(blob, reference_probs(meta, name, reference))
            except CheckpointError as exc:
                raise _fail(path, f"tensor {key!r} does not decode: {exc}") from None
    return out


def loads(data: bytes, path: str, reference: Checkpoint | None = None) -> Checkpoint:
    """Parse and validate checkpoint bytes; coded client files need their ``reference`` global."""
    header, _ = parse_header(data, path)
    meta = parse_meta(header, path)
    _check_tensors(meta, header, path)
    if reference is not None and meta.encoding in CODED_ENCODINGS:
        if meta.parent_digest != reference.digest:
            raise _fail(path, "was coded against another global (parent digest differs); re-run train-client")
        if meta.kind != reference.meta.kind or meta.targets != reference.meta.targets:
            raise _fail(path, "its mask kind or target modules differ from the global it is coded against")
    try:
        stored = st_load(data)
    except Exception as exc:  # safetensors raises its own error types for malformed data
        raise _fail(path, f"unreadable safetensors data ({type(exc).__name__})") from None
    tensors = decode_stored(meta, stored, reference, path)
    return Checkpoint(meta=meta, tensors=tensors, digest=file_digest(data), path=path, size=len(data))


CODE_BYTES_PER_WEIGHT = 2
"""Most bytes per masked weight a client mask may take: ``none`` stores one byte per weight and
``coded``/``sparse`` streams stay below 16 bits per weight (an ANS code of a bit costs at most
-log2 of the clamped probability, ≈10 bits; a sparse surprise a few bits); ``packed`` is 1/8."""
HEADER_SLACK_BYTES = 64 * 1024
HEADER_BYTES_PER_ENTRY = 512


def max_client_bytes(global_meta: FileMeta, *, masked: bool = False) -> int:
    """The largest client file a global's metadata allows: mask payload at its worst encoding
    (or the scaling vectors), the head in float32, and a header of the global's names plus slack.
    Client files larger than this are refused before any byte of them is parsed. ``masked``
    (secure aggregation): every upload value may take up to 64 bits."""
    if masked:
        values = sum(math.prod(shape) for shape in plaintext_shapes(global_meta).values())
        names = len(global_meta.model_dump_json())
        entries = len(global_meta.targets) + len(global_meta.head)
        return 8 * values + HEADER_SLACK_BYTES + 8 * names + 2 * HEADER_BYTES_PER_ENTRY * entries
    payload = 0
    for target in global_meta.targets.values():
        if not kind_of(global_meta.kind).binary:
            payload += 4 * target.out_features
        else:
            payload += CODE_BYTES_PER_WEIGHT * math.prod(target.shape) + HEADER_BYTES_PER_ENTRY
    payload += sum(4 * math.prod(shape) for shape in global_meta.head.values())
    names = len(global_meta.model_dump_json())
    entries = len(global_meta.targets) + len(global_meta.head)
    return payload + HEADER_SLACK_BYTES + 4 * names + HEADER_BYTES_PER_ENTRY * entries


def load_checkpoint(path: str, reference: Checkpoint | None = None, max_bytes: int = MAX_FILE_BYTES) -> Checkpoint:
    """Read, check and decode a checkpoint file (local path or fsspec URL)."""
    try:
        data = storage.read_bytes(path, max_bytes, what="checkpoint")
    except CheckpointError:
        raise
    except SupermaskError as exc:
        raise CheckpointError(str(exc)) from None
    return loads(data, path, reference)


def read_meta(path: str, max_bytes: int = MAX_FILE_BYTES) -> FileMeta:
    """Only the metadata of a checkpoint (reads the header, not the tensors)."""
    try:
        fs, p = storage.filesystem(path)
        if not fs.isfile(p):
            raise _fail(path, "not found")
        size = fs.size(p)
        if size is not None and size > max_bytes:
            raise _fail(path, f"is {size} bytes, over the {max_bytes}-byte limit")
        with fs.open(p, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _fail(path, "not a safetensors file (too short; an empty or truncated upload?)")
            length = int.from_bytes(prefix, "little")
            if length > MAX_HEADER_BYTES:
                raise _fail(path, f"not a safetensors file (header claims {length} bytes, limit {MAX_HEADER_BYTES})")
            body = handle.read(length)
            if len(body) < length:
                raise _fail(path, "truncated (header runs past the end of the file)")
    except OSError as exc:
        raise _fail(path, f"could not be read ({exc})") from None
    try:
        header = json.loads(body)
    except (ValueError, RecursionError):  # also huge integers and deeply nested arrays
        raise _fail(path, "not a safetensors file (header is not JSON; a pickle or another format?)") from None
    if not isinstance(header, dict):
        raise _fail(path, "not a safetensors file (header is not a JSON object)")
    return parse_meta(header, path)
