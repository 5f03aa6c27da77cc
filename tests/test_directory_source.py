"""The directory source, read directly through the source contract."""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import datetime, timezone

import pytest

from sources.directory import DirectoryDataSource as _Directory
from sources.errors import SourceConfigError
from sources.testing import ping, read_all, read_partitions


def DirectoryDataSource(configuration, roots=None):
    """The source as config.yml would allow it: reading below the test's folder."""
    roots = roots or [os.path.dirname(os.path.realpath(configuration["directory"]))]
    return _Directory(configuration, operator_settings={"allowed_roots": roots})


def make_tree(root):
    (root / "a.txt").write_text("alpha", encoding="utf-8")
    (root / "sub").mkdir()
    (root / "sub" / "b.md").write_text("# beta", encoding="utf-8")
    (root / "sub" / "deep").mkdir()
    (root / "sub" / "deep" / "c.bin").write_bytes(b"\x00\x01\x02binary")
    (root / "other").mkdir()
    (root / "other" / "d.txt").write_text("delta", encoding="utf-8")


def test_directory_when_read_then_one_document_per_file_with_fields(tmp_path):
    make_tree(tmp_path)
    os.utime(tmp_path / "a.txt", (1_700_000_000, 1_700_000_000))
    docs = {d["path"]: d for d in read_all(DirectoryDataSource({"directory": str(tmp_path)}))}
    assert set(docs) == {"a.txt", "sub/b.md", "sub/deep/c.bin", "other/d.txt"}
    a = docs["a.txt"]
    assert a["_id"] == hashlib.sha1(b"a.txt").hexdigest()
    assert a["file_name"] == "a.txt" and a["size"] == 5 and a["body"] == "alpha"
    assert a["_timestamp"] == datetime.fromtimestamp(1_700_000_000, tz=timezone.utc).isoformat()
    assert base64.b64decode(docs["sub/deep/c.bin"]["_attachment"]) == b"\x00\x01\x02binary"
    assert "body" not in docs["sub/deep/c.bin"]


def test_directory_when_pattern_given_then_only_matching_files(tmp_path):
    make_tree(tmp_path)
    docs = read_all(DirectoryDataSource({"directory": str(tmp_path), "pattern": "**/*.txt"}))
    assert sorted(d["path"] for d in docs) == ["a.txt", "other/d.txt"]


def test_directory_when_partitioned_then_same_documents_as_one_read(tmp_path):
    make_tree(tmp_path)
    source = DirectoryDataSource({"directory": str(tmp_path)})
    assert len(list(source.get_partitions())) == 3  # top-level files, other/, sub/
    whole = sorted(d["_id"] for d in read_all(DirectoryDataSource({"directory": str(tmp_path)})))
    parts = sorted(d["_id"] for d in read_partitions(source))
    assert parts == whole and len(parts) == 4


def test_directory_when_ids_then_stable_across_reads(tmp_path):
    make_tree(tmp_path)
    first = {d["path"]: d["_id"] for d in read_all(DirectoryDataSource({"directory": str(tmp_path)}))}
    (tmp_path / "a.txt").write_text("changed", encoding="utf-8")
    second = {d["path"]: d["_id"] for d in read_all(DirectoryDataSource({"directory": str(tmp_path)}))}
    assert first == second


def test_directory_when_folder_missing_then_ping_names_it(tmp_path):
    with pytest.raises(SourceConfigError, match="does-not-exist does not exist"):
        ping(DirectoryDataSource({"directory": str(tmp_path / "does-not-exist")}))


def test_directory_when_pattern_escapes_folder_then_refused(tmp_path):
    with pytest.raises(SourceConfigError, match="must be relative"):
        ping(DirectoryDataSource({"directory": str(tmp_path), "pattern": "../**/*"}))


def test_directory_when_file_unreadable_then_error_names_file(tmp_path, monkeypatch):
    """Root (CI) reads any file, so permission loss is simulated at the one call that reads."""
    import os

    from sources.errors import SourceError

    make_tree(tmp_path)
    real_open = os.open

    def fake_open(path, *args, **kwargs):
        if str(path).endswith("a.txt"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    with pytest.raises(SourceError, match="cannot read a.txt: Permission denied"):
        read_all(DirectoryDataSource({"directory": str(tmp_path)}))


def test_directory_when_synced_then_every_format_indexed_as_its_text_not_its_markup(es, tmp_path, index_name):
    """Real files of each format the docs list, through the real pipeline into Elasticsearch."""
    from tests.helpers import index_docs, run_sync
    from tests.test_extract_text import make_docx, make_pdf

    html = ("<!DOCTYPE html><html><head><title>Welcome page</title><style>h1 {color: red}</style>"
            "<script>var tracking = 1;</script></head><body><h1>Hello HTML</h1><p>Some <b>bold</b> words "
            "&amp; more</p></body></html>")
    files = {
        "page.html": html.encode(), "old.htm": html.encode(), "strict.xhtml": html.encode(),
        "report.pdf": make_pdf("Hello from the PDF", "Second page"),
        "report.docx": make_docx(),
        "notes.md": b"# Notes\n\n*emphasis* stays as written", "plain.txt": "caf\u00e9 au lait".encode(),
        "table.csv": b"a,b\n1,2\n", "data.json": b'{"k": "v"}', "README": b"no extension, plain text\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)

    outcome = run_sync(index=index_name, configuration={"directory": str(tmp_path)})

    assert outcome["status"] == "completed", outcome.get("error")
    docs = {doc["path"]: doc for doc in index_docs(es, index_name).values()}
    assert set(docs) == set(files)
    assert not [path for path, doc in docs.items() if "_attachment" in doc]
    for name in ("page.html", "old.htm", "strict.xhtml"):
        body = docs[name]["body"]
        assert "Hello HTML" in body and "bold" in body and "& more" in body, body
        assert "<" not in body and "tracking" not in body and "color: red" not in body, body
    assert "Hello from the PDF" in docs["report.pdf"]["body"] and "Second page" in docs["report.pdf"]["body"]
    assert docs["report.docx"]["body"].splitlines() == [
        "Quarterly report", "Revenue grew in every region.", "north\t42", "Closing words."]
    assert docs["notes.md"]["body"] == "# Notes\n\n*emphasis* stays as written"
    assert docs["plain.txt"]["body"] == "caf\u00e9 au lait"
    assert docs["table.csv"]["body"] == "a,b\n1,2\n" and docs["data.json"]["body"] == '{"k": "v"}'
    assert docs["README"]["body"] == "no extension, plain text\n"


def make_hostile_tree(tmp_path):
    """A folder with everything a walk can trip on, and ``outside/`` next to it (not allowed)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for folder in (root / "a" / ".h", root / "sub" / "deep", outside):
        folder.mkdir(parents=True)
    for name in ("a.txt", ".hidden.txt", "B.md", "a-b.txt", "_u.txt", "README", ".bashrc", "x.tar.gz",
                 "a/x.txt", "a/.h/y.txt", "sub/deep/c.txt", "sub/deep/.e.md", "sub/a.txt", "outside.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name, encoding="utf-8")
    (outside / "secret.txt").write_text("secret", encoding="utf-8")
    os.symlink(root / "a.txt", root / "link-in.txt")
    os.symlink(outside / "secret.txt", root / "link-out.txt")
    os.symlink(outside / "secret.txt", root / "sub" / "deep" / "link-out.txt")
    os.symlink(root / "sub", root / "dirlink-in")
    os.symlink(outside, root / "sub" / "dirlink-out")
    os.symlink(root / "missing", root / "broken.txt")
    os.symlink(root / "loop.txt", root / "loop.txt")
    os.mkfifo(root / "sub" / "fifo.txt")
    return root


@pytest.mark.parametrize("pattern", ["**/*", "*", "**/*.txt", "*.txt", "**/.*", "**/[ab]*", "**/?.txt", "a.txt",
                                     "**/x.txt", "README", "**/link*", "**/*.TXT", "sub/**/*.txt", "*/*.txt"])
def test_directory_walk_when_any_pattern_and_partition_then_lists_exactly_what_pathlib_glob_lists(tmp_path, pattern):
    """The fast walk (one scandir per folder, one stat per file) against the glob it replaced
    (still used for patterns with folders in them): same files, same order, same stat."""
    root = make_hostile_tree(tmp_path)
    source = DirectoryDataSource({"directory": str(root), "pattern": pattern}, roots=[str(root)])
    partitions = [None] + list(source.get_partitions())
    assert len(partitions) == 4  # one read; top-level files, a/, sub/ (symlinked folders are not partitions)
    for partition in partitions:
        params = partition.params if partition else {}
        walked = [(path, relative, stat.st_ino, stat.st_size) for path, relative, stat in source._files(partition)]
        globbed = [(path, relative, stat.st_ino, stat.st_size)
                   for path, relative, stat in source._globbed(root, params)]
        assert walked == globbed, (pattern, params)
    whole = [relative for _, relative, _ in source._files(None)]
    assert not [r for r in whole if "link-out" in r or "broken" in r or "loop" in r or "fifo" in r]


def test_directory_walk_when_everything_listed_then_hidden_files_in_sorted_order(tmp_path):
    root = make_hostile_tree(tmp_path)
    docs = read_all(DirectoryDataSource({"directory": str(root)}, roots=[str(root)]))
    paths = [d["path"] for d in docs]
    assert paths == [".bashrc", ".hidden.txt", "B.md", "README", "_u.txt", "a/.h/y.txt", "a/x.txt", "a-b.txt",
                     "a.txt", "link-in.txt", "outside.txt", "sub/a.txt", "sub/deep/.e.md", "sub/deep/c.txt",
                     "x.tar.gz"]  # as sorted paths: folder by folder (``a/...`` before ``a-b.txt``)
    by_path = {d["path"]: d for d in docs}
    assert by_path["x.tar.gz"]["extension"] == ".gz" and by_path[".bashrc"]["extension"] == ""
    assert by_path["link-in.txt"]["body"] == "a.txt"  # a symlink within the roots is read through


def test_directory_walk_when_partition_folder_swapped_for_symlink_out_of_roots_then_nothing_listed(tmp_path):
    root = make_hostile_tree(tmp_path)
    source = DirectoryDataSource({"directory": str(root)}, roots=[str(root)])
    partition = next(p for p in source.get_partitions() if p.params.get("subfolder") == "a")
    os.rename(root / "a", tmp_path / "outside" / "a")
    os.symlink(tmp_path / "outside" / "a", root / "a")
    assert list(source._files(partition)) == []


def test_directory_walk_when_subfolder_unlistable_then_sync_fails_naming_it(tmp_path, monkeypatch):
    """A folder it cannot list fails the read (its files would otherwise be deleted as gone);
    root (CI) lists any folder, so the refusal is simulated at the one call that lists."""
    from sources.errors import SourceError

    make_tree(tmp_path)
    real_scandir = os.scandir

    def fake_scandir(path):
        if str(path).endswith("deep"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", fake_scandir)
    with pytest.raises(SourceError, match="cannot list sub/deep/: Permission denied"):
        read_all(DirectoryDataSource({"directory": str(tmp_path)}))


def test_iso_mtime_when_any_mtime_then_exactly_what_datetime_gives(tmp_path):
    """The fast ``_timestamp`` of a file is datetime's own text, to the microsecond (a differing
    one would make the next sync write every file again): random instants, the rounding edges
    (half a microsecond, a second's last microsecond), negative times, and real files' mtimes."""
    import math
    import random
    from types import SimpleNamespace

    from sources.directory import iso_mtime

    rng = random.Random(7)
    instants = [rng.uniform(-2e9, 4e9) for _ in range(50_000)]
    instants += [math.floor(t) + k / 1e6 for t in instants[:500] for k in (0, 1, 499_999, 500_000, 999_999)]
    instants += [1796527279.9999995, 1796527279.0000005, 1e9 + 0.5e-6, 0.0, -0.5e-6]
    for n in range(20):
        (tmp_path / f"f{n}").write_text("x")
        os.utime(tmp_path / f"f{n}", ns=(0, rng.randrange(0, 4 * 10**18)))
        instants.append(os.stat(tmp_path / f"f{n}").st_mtime)
    wrong = [t for t in instants if iso_mtime(SimpleNamespace(st_mtime=t))
             != datetime.fromtimestamp(t, tz=timezone.utc).isoformat()]
    assert not wrong, wrong[:5]
