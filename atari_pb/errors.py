"""Errors the command line turns into one line on stderr and an exit status.

UsageError (exit 2): the request itself is wrong (unknown game, bad key, missing path); nothing was written.
DataError (exit 1): the data is wrong (truncated file, bad dtype, hash mismatch).
"""


class AtariPBError(Exception):
    exit_code = 1


class UsageError(AtariPBError):
    exit_code = 2


class DataError(AtariPBError):
    exit_code = 1
