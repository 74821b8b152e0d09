"""pacman's version order: a Python reading of libalpm's ``alpm_pkg_vercmp``.

A full version is ``[epoch:]pkgver[-pkgrel]``. Epochs compare first (a missing one is 0), then
pkgver, then pkgrel when both versions have one. Each part is compared segment by segment:
runs of digits compare as numbers (leading zeros dropped, more digits wins), runs of letters
compare as strings, a numeric segment beats an alphabetic one, separators (anything not a
letter or digit) only divide segments, except that a longer run of separators wins, and a
version that runs out of segments loses, unless what the other has left starts with a letter
(``1.0a`` is older than ``1.0``). Letters and digits are ASCII only, as in the C locale.
"""

from __future__ import annotations

import functools


def _isdigit(c: int) -> bool:
    return 0x30 <= c <= 0x39


def _isalpha(c: int) -> bool:
    return 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A


def _isalnum(c: int) -> bool:
    return _isdigit(c) or _isalpha(c)


def _segments_cmp(a: bytes, b: bytes) -> int:
    """-1, 0 or 1: the order of one part (epoch, pkgver or pkgrel) of two versions."""
    if a == b:
        return 0
    i = j = 0  # the start of the separators before the next segment
    n, m = len(a), len(b)
    while i < n and j < m:
        one, two = i, j
        while one < n and not _isalnum(a[one]):
            one += 1
        while two < m and not _isalnum(b[two]):
            two += 1
        if one >= n or two >= m:
            i, j = one, two
            break
        if one - i != two - j:
            return -1 if one - i < two - j else 1
        end1, end2 = one, two
        if _isdigit(a[one]):
            while end1 < n and _isdigit(a[end1]):
                end1 += 1
            while end2 < m and _isdigit(b[end2]):
                end2 += 1
            numeric = True
        else:
            while end1 < n and _isalpha(a[end1]):
                end1 += 1
            while end2 < m and _isalpha(b[end2]):
                end2 += 1
            numeric = False
        if end2 == two:  # the segments are of different kinds
            return 1 if numeric else -1
        seg1, seg2 = a[one:end1], b[two:end2]
        if numeric:
            seg1, seg2 = seg1.lstrip(b"0"), seg2.lstrip(b"0")
            if len(seg1) != len(seg2):
                return 1 if len(seg1) > len(seg2) else -1
        if seg1 != seg2:
            return 1 if seg1 > seg2 else -1
        i, j = end1, end2
    rest1, rest2 = a[i:], b[j:]
    if not rest1 and not rest2:
        return 0
    if (not rest1 and not _isalpha(rest2[0])) or (rest1 and _isalpha(rest1[0])):
        return -1
    return 1


def split_evr(version: str) -> tuple[str, str, str | None]:
    """(epoch, pkgver, pkgrel or None) as libalpm splits a full version: leading digits and a
    colon make the epoch, the last hyphen starts the release."""
    digits = 0
    while digits < len(version) and version[digits].isascii() and version[digits].isdigit():
        digits += 1
    rest_start = 0
    epoch = "0"
    if digits < len(version) and version[digits] == ":":
        epoch = version[:digits] or "0"
        rest_start = digits + 1
    rest = version[rest_start:]
    # libalpm looks for the last hyphen after the leading digits only
    hyphen = version.rfind("-", digits)
    if hyphen >= rest_start:
        return epoch, version[rest_start:hyphen], version[hyphen + 1:]
    return epoch, rest, None


def vercmp(a: str, b: str) -> int:
    """-1, 0 or 1 as pacman's ``vercmp a b`` orders two full versions."""
    if a == b:
        return 0
    e1, v1, r1 = split_evr(a)
    e2, v2, r2 = split_evr(b)
    ret = _segments_cmp(e1.encode(), e2.encode())
    if ret == 0:
        ret = _segments_cmp(v1.encode(), v2.encode())
        if ret == 0 and r1 is not None and r2 is not None:
            ret = _segments_cmp(r1.encode(), r2.encode())
    return ret


version_key = functools.cmp_to_key(vercmp)
