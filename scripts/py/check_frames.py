"""Independent check of firehose frames with the Python `atproto` SDK (not our Rust decoder).

Reads a capture file in the corpus format ([u32 LE length][frame]..., zstd when the name ends in .zst),
parses every frame with `atproto_subscription.frames.Frame.from_bytes` and
`atproto_firehose.parse_subscribe_repos_message`, and for #commit / #sync checks the CAR (`blocks`):
  - the CAR parses with `atproto_core.car.CAR.from_bytes`, its root is the commit CID;
  - every block's CID is sha2-256 of its bytes (CAR sections parsed by hand here), and the bytes (like the
    frame header and body) are canonical DAG-CBOR (a strict walker here: minimal lengths, sorted keys);
  - the commit block has version 3, the frame's did/rev, and a 64-byte sig;
  - every create/update op's CID is a block in the CAR, and that record validates against its lexicon
    (`atproto_client.models.utils.get_or_create`, strict).
Prints ONE JSON line:
  {frames, commits, ops, creates, updates, deletes, identity, account, sync, info, error_frames, unknown,
   seq_first, seq_last, errors: [...]}
Usage: .tools/venv/bin/python scripts/py/check_frames.py CAPTURE [--max-errors N] [--no-records]
"""

import argparse
import hashlib
import json
import struct
import sys

import libipld
from atproto_client.models.record_registry import RECORD_TYPE_TO_MODEL_CLASS
from atproto_client.models.utils import get_or_create
from atproto_core.car import CAR
from atproto_firehose import parse_subscribe_repos_message
from atproto_subscription.frames import ErrorFrame, Frame

KNOWN = {'#commit', '#sync', '#identity', '#account', '#info'}
SHA2_256 = 0x12
DAG_CBOR = 0x71


def read_capture(path):
    with open(path, 'rb') as f:
        raw = f.read()
    if path.endswith('.zst'):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    frames, off = [], 0
    while off < len(raw):
        if off + 4 > len(raw):
            raise ValueError(f'truncated length prefix at byte {off}')
        (n,) = struct.unpack_from('<I', raw, off)
        off += 4
        if off + n > len(raw):
            raise ValueError(f'truncated frame at byte {off}')
        frames.append(raw[off : off + n])
        off += n
    return frames


def varint(buf, off):
    value, shift = 0, 0
    while True:
        b = buf[off]
        off += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, off
        shift += 7


class NotCanonical(Exception):
    pass


def _walk(buf, off):
    """Walks one DAG-CBOR item strictly (minimal lengths, sorted string keys, tag 42 only); returns the end."""
    ib = buf[off]
    major, info = ib >> 5, ib & 31
    off += 1
    if major == 7:
        if info in (20, 21, 22):
            return off
        if info == 27:
            return off + 8
        raise NotCanonical(f'simple/float value 0x{ib:02x} not allowed')
    if info < 24:
        val = info
    elif info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        val = int.from_bytes(buf[off : off + size], 'big')
        off += size
        if val < (24 if info == 24 else 1 << (8 * (size // 2))):
            raise NotCanonical(f'non-minimal length/int 0x{ib:02x} {val}')
    else:
        raise NotCanonical('indefinite length')
    if major in (0, 1):
        return off
    if major == 2:
        return off + val
    if major == 3:
        buf[off : off + val].decode('utf-8')
        return off + val
    if major == 4:
        for _ in range(val):
            off = _walk(buf, off)
        return off
    if major == 5:
        prev = None
        for _ in range(val):
            if buf[off] >> 5 != 3:
                raise NotCanonical('map key is not a string')
            start = off
            off = _walk(buf, off)
            key = bytes(buf[start:off])
            if prev is not None and (len(key), key) <= (len(prev), prev):
                raise NotCanonical(f'map keys out of order: {prev!r} then {key!r}')
            prev = key
            off = _walk(buf, off)
        return off
    if major == 6:
        if val != 42 or buf[off] >> 5 != 2:
            raise NotCanonical(f'tag {val} not allowed')
        end = _walk(buf, off)
        if buf[off + 1 + (buf[off] & 31 >= 24)] != 0:
            raise NotCanonical('CID link without the 0x00 multibase prefix')
        return end
    raise NotCanonical(f'major type {major}')


def canonical_problem(data):
    """None when `data` is exactly one canonical DAG-CBOR item, else a description.

    (libipld's decode/re-encode cannot be used for this: it turns byte strings that happen to parse as a
    CID, e.g. some 64-byte signatures, into links.)"""
    try:
        end = _walk(data, 0)
    except (NotCanonical, IndexError, UnicodeDecodeError) as e:
        return str(e) or type(e).__name__
    return None if end == len(data) else f'{len(data) - end} trailing bytes'


def car_sections(car):
    """Yields (cid_bytes, data) for each block of a CAR v1, parsed by hand."""
    hlen, off = varint(car, 0)
    off += hlen
    while off < len(car):
        slen, off = varint(car, off)
        section = car[off : off + slen]
        off += slen
        # CIDv1: varint version, varint codec, varint hash code, varint digest size, digest.
        p = 0
        _, p = varint(section, p)
        _, p = varint(section, p)
        _, p = varint(section, p)
        size, p = varint(section, p)
        p += size
        yield section[:p], section[p:]


def check_car(blocks, root_cid, errors, where):
    """Returns {cid_bytes: decoded block} after checking hashes and canonical encoding."""
    car = CAR.from_bytes(blocks)
    if str(car.root) != str(root_cid):
        errors.append(f'{where}: CAR root {car.root} != commit {root_cid}')
    decoded = {}
    for cid_bytes, data in car_sections(blocks):
        cid = libipld.decode_cid(cid_bytes)
        if cid['hash']['code'] != SHA2_256 or cid['codec'] != DAG_CBOR:
            errors.append(f'{where}: unexpected cid codec/hash {cid}')
            continue
        if hashlib.sha256(data).digest() != cid['hash']['digest']:
            errors.append(f'{where}: block hash mismatch for {libipld.encode_cid(cid_bytes)}')
        value = libipld.decode_dag_cbor(data)
        problem = canonical_problem(data)
        if problem:
            errors.append(f'{where}: block {libipld.encode_cid(cid_bytes)} is not canonical DAG-CBOR: {problem}')
        decoded[cid_bytes] = value
    if len(decoded) != len(car.blocks):
        errors.append(f'{where}: hand-parsed {len(decoded)} blocks, SDK parsed {len(car.blocks)}')
    return decoded


def cid_bytes_of(cid):
    return cid._raw_byte_form if cid._raw_byte_form is not None else libipld.decode_cid(str(cid))['raw']


def check_commit_block(decoded, commit_cid, did, rev, errors, where):
    block = decoded.get(cid_bytes_of(commit_cid))
    if block is None:
        errors.append(f'{where}: commit block {commit_cid} missing from CAR')
        return
    if block.get('version') != 3:
        errors.append(f'{where}: commit version {block.get("version")}')
    if block.get('did') != did or block.get('rev') != rev:
        errors.append(f'{where}: commit did/rev {block.get("did")}/{block.get("rev")} != {did}/{rev}')
    if not isinstance(block.get('sig'), bytes) or len(block['sig']) != 64:
        errors.append(f'{where}: commit sig is not 64 bytes')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('capture')
    ap.add_argument('--max-errors', type=int, default=50)
    ap.add_argument('--no-records', action='store_true', help='skip lexicon validation of records')
    args = ap.parse_args()

    s = dict(frames=0, commits=0, ops=0, creates=0, updates=0, deletes=0, identity=0, account=0, sync=0,
             info=0, error_frames=0, unknown=0, seq_first=None, seq_last=None)
    errors = []
    frames = read_capture(args.capture)
    for i, raw in enumerate(frames):
        s['frames'] += 1
        where = f'frame {i}'
        try:
            frame = Frame.from_bytes(raw)
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            errors.append(f'{where}: unparseable frame: {e!r}')
            continue
        try:
            header_end = _walk(raw, 0)
            problem = canonical_problem(raw[header_end:]) or canonical_problem(raw[:header_end])
        except (NotCanonical, IndexError, UnicodeDecodeError) as e:
            problem = str(e) or type(e).__name__
        if problem:
            errors.append(f'{where}: frame header/body not canonical DAG-CBOR: {problem}')
        if isinstance(frame, ErrorFrame):
            s['error_frames'] += 1
            continue
        if frame.type not in KNOWN:
            s['unknown'] += 1
            continue
        try:
            msg = parse_subscribe_repos_message(frame)
        except Exception as e:  # noqa: BLE001
            errors.append(f'{where} ({frame.type}): SDK rejected body: {e!r}')
            continue
        seq = getattr(msg, 'seq', None)
        if seq is not None:
            if s['seq_last'] is not None and seq <= s['seq_last']:
                errors.append(f'{where}: seq {seq} not increasing after {s["seq_last"]}')
            s['seq_first'] = seq if s['seq_first'] is None else s['seq_first']
            s['seq_last'] = seq
        where = f'{where} seq {seq}'
        try:
            if frame.type == '#commit':
                s['commits'] += 1
                decoded = check_car(msg.blocks, msg.commit, errors, where)
                check_commit_block(decoded, msg.commit, msg.repo, msg.rev, errors, where)
                for op in msg.ops:
                    s['ops'] += 1
                    if op.action == 'delete':
                        s['deletes'] += 1
                        if op.cid is not None:
                            errors.append(f'{where}: delete {op.path} has a cid')
                        continue
                    s['creates' if op.action == 'create' else 'updates'] += 1
                    if op.cid is None:
                        errors.append(f'{where}: {op.action} {op.path} without cid')
                        continue
                    record = decoded.get(cid_bytes_of(op.cid))
                    if record is None:
                        errors.append(f'{where}: {op.action} {op.path} cid {op.cid} not in CAR')
                        continue
                    collection = op.path.split('/')[0]
                    if record.get('$type') != collection:
                        errors.append(f'{where}: record $type {record.get("$type")} != {collection}')
                    if not args.no_records and len(errors) < args.max_errors:
                        try:
                            model = RECORD_TYPE_TO_MODEL_CLASS.get(collection)
                            if model is not None:
                                get_or_create(record, model, strict=True, strict_string_format=True)
                        except Exception as e:  # noqa: BLE001
                            errors.append(f'{where}: {op.path} fails its lexicon: {str(e)[:300]}')
            elif frame.type == '#sync':
                s['sync'] += 1
                decoded = check_car(msg.blocks, CAR.from_bytes(msg.blocks).root, errors, where)
                check_commit_block(decoded, CAR.from_bytes(msg.blocks).root, msg.did, msg.rev, errors, where)
            elif frame.type == '#identity':
                s['identity'] += 1
            elif frame.type == '#account':
                s['account'] += 1
            elif frame.type == '#info':
                s['info'] += 1
        except Exception as e:  # noqa: BLE001
            errors.append(f'{where}: check crashed: {e!r}')
    s['errors'] = errors[: args.max_errors]
    s['error_count'] = len(errors)
    print(json.dumps(s))
    return 0


if __name__ == '__main__':
    sys.exit(main())
