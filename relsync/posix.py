"""The error atoms a board answers with (POSIX codes, the code server's reasons, our
helper's own), in words for a person."""

from __future__ import annotations

WORDS = {
    "enoent": "no such file or directory",
    "enotdir": "a part of the path is a file, not a directory",
    "eisdir": "it is a directory",
    "eacces": "permission denied",
    "eperm": "operation not permitted",
    "erofs": "read-only file system",
    "enospc": "the disk is full",
    "edquot": "disk quota exceeded",
    "eexist": "it exists already",
    "enotempty": "directory not empty",
    "eloop": "too many levels of symbolic links",
    "enametoolong": "file name too long",
    "emfile": "too many open files",
    "enfile": "too many open files in the system",
    "ebusy": "device or resource busy",
    "etxtbsy": "the program file is running",
    "eio": "input/output error (the storage may be failing)",
    "einval": "invalid argument",
    "exdev": "it is on another file system",
    "badarg": "bad argument",
    "badfile": "not a beam this VM can load (built for a newer OTP, or damaged)",
    "nofile": "no such beam file",
    "sticky_directory": "it belongs to OTP's sticky system directories",
    "on_load_failure": "its -on_load function failed",
    "not_purged": "old code is still running in some process",
    "hash_mismatch": "the data arrived corrupted",
    "lock_lost": "this sync no longer holds the board's sync lock",
    "staged_file_replaced": "its temporary file was replaced meanwhile",
}


def describe(reason: str) -> str:
    """``enotdir`` -> ``a part of the path is a file, not a directory``; unknown reasons as
    they are."""
    return WORDS.get(reason, reason)
