#!/usr/bin/python3
"""Loads a cds checkpoint (docs/checkpoint.md); prints name, shape, sum per tensor."""
import sys, zlib
import msgpack, numpy as np


def load(path):
    data = open(path, 'rb').read()
    if len(data) < 11 or data[-11:-4] != b'\xa5crc32\xce':
        sys.exit(f'{path}: no crc32 entry at the end: truncated or not a checkpoint')
    if zlib.crc32(data[:-11]) != int.from_bytes(data[-4:], 'big'):
        sys.exit(f'{path}: CRC-32 mismatch: the file is corrupt')
    ck = msgpack.unpackb(data)
    if ck['format'] != 'cds-checkpoint' or ck['format_version'] != 1:
        sys.exit(f'{path}: not a version 1 cds checkpoint')
    tensors = {t['name']: np.frombuffer(b''.join(t['data']), '<f4').reshape(t['shape'])
               for t in ck['params'] + ck['opt_state']}
    return ck, tensors


if __name__ == '__main__':
    ck, tensors = load(sys.argv[1])
    print('epoch', ck['epoch'], 'step', ck['step'], 'optimizer', ck['optimizer'], sep='\t')
    for name, a in tensors.items():
        print(name, 'x'.join(map(str, a.shape)) or 'scalar', repr(float(a.sum(dtype=np.float64))), sep='\t')
