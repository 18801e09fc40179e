"""Download-once cache for network files given by URL (e.g. NVIDIA's published EDM snapshots).

A file is fetched with urllib into ``<cache>/downloads/<hash of URL>-<file name>``, checked
(byte count from Content-Length; sha256 when given) and only then moved into place, so
anything in the cache is a complete download. The cache folder is the `cache_dir` argument,
else ``$PDR_JAX_CACHE``, else ``~/.cache/pdr_jax``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import posixpath
import sys
import tempfile
import urllib.parse
import urllib.request

import tqdm

CACHE_ENV = "PDR_JAX_CACHE"
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A download failed or its integrity check did not pass."""


def is_url(path) -> bool:
    return isinstance(path, str) and path.lower().startswith(("http://", "https://"))


def cache_root(cache_dir=None) -> pathlib.Path:
    """The cache folder: `cache_dir`, else $PDR_JAX_CACHE, else ~/.cache/pdr_jax."""
    root = cache_dir or os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "pdr_jax"
    return pathlib.Path(root).expanduser()


def cached_path(url: str, cache_dir=None) -> pathlib.Path:
    """Where `url` is (or will be) cached."""
    name = posixpath.basename(urllib.parse.urlparse(url).path) or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_root(cache_dir) / "downloads" / f"{digest}-{name}"


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    *,
    cache_dir=None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> pathlib.Path:
    """The local path of `url`, downloaded on first use and then served from the cache.

    `sha256`: expected hex digest; checked after the download and on every cache hit.
    Raises DownloadError on HTTP/network failures, a short or long body (Content-Length),
    or a digest mismatch; no partial file is left in the cache.
    """
    if not is_url(url):
        raise DownloadError(f"{url!r}: only http:// and https:// URLs can be downloaded")
    target = cached_path(url, cache_dir)
    if target.exists():
        if sha256 and _sha256(target) != sha256.lower():
            raise DownloadError(
                f"{target} (cached from {url}): sha256 {_sha256(target)} differs from the expected "
                f"{sha256}; delete the file to download it again"
            )
        return target

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    tmp = pathlib.Path(tmp_name)
    try:
        digest, done = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except OSError as exc:
                raise DownloadError(f"{url}: download failed ({exc})") from exc
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                bar = tqdm.tqdm(
                    total=total,
                    desc=f"downloading {target.name.split('-', 1)[1]}",
                    unit="B",
                    unit_scale=True,
                    file=sys.stderr,
                    disable=not progress,
                )
                try:
                    with bar:
                        for chunk in iter(lambda: response.read(_CHUNK), b""):
                            out.write(chunk)
                            digest.update(chunk)
                            done += len(chunk)
                            bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as exc:
                    raise DownloadError(
                        f"{url}: download broke off after {done} bytes ({exc!r})"
                    ) from exc
        if total is not None and done != total:
            raise DownloadError(f"{url}: received {done} bytes, Content-Length says {total}")
        if sha256 and digest.hexdigest() != sha256.lower():
            raise DownloadError(
                f"{url}: sha256 {digest.hexdigest()} differs from the expected {sha256}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
