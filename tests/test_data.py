"""The training-data pipeline: sources → documents → split → tokens → packed, cached memmaps.

A tiny WordLevel tokenizer is trained in the test (no downloads); the Gutenberg checks use the shared corpus
and the SmolLM2 tokenizer under the data root ($LATENTCACHE_DATA, else ../shared/data) and skip, naming what is
missing, otherwise.
"""

import io
import json
import os
import random
import tarfile

import numpy as np
import pytest

from latentcache.errors import DataError
from latentcache.paths import data_root
from latentcache.train import data
from latentcache.train.data import defaults

WORDS = ["the", "a", "cat", "dog", "bird", "sat", "ran", "flew", "on", "over", "under", "mat", "hill", "tree", "red",
         "blue", "green", "big", "small", "quick", "slow"]


def make_tokenizer(directory, eos_token="<eos>", with_config=True):
    """A WordLevel tokenizer over WORDS (whitespace split), saved as ``directory/tokenizer.json``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", eos_token])
    tokenizer.train_from_iterator([" ".join(WORDS)] * 3, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    if with_config:
        (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos_token}))
    return directory / "tokenizer.json"


def sentences(seed, count, words=12):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(count)]


def ids_of(tokenizer_path, text):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_path)).encode(text, add_special_tokens=False).ids


def eos_of(tokenizer_path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_path)).token_to_id("<eos>")


def write_tar(path, members):
    """``members``: {name: bytes}; a directory entry and a symlink are added to prove they are skipped."""
    with tarfile.open(path, "w:xz") as archive:
        folder = tarfile.TarInfo("docs")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("docs/link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
        archive.addfile(link)
    return path


def jsonl(*records):
    return "".join(json.dumps(record) + "\n" for record in records)


@pytest.fixture
def tok(tmp_path):
    return make_tokenizer(tmp_path / "tok")


def config(sources, tok, seq_len=8, **kwargs):
    return data.CorpusConfig(sources, tok, seq_len, **kwargs)


def prepare(sources, tok, tmp_path, seq_len=8, **kwargs):
    return data.prepare_corpus(sources, tok, seq_len, tmp_path / "cache", progress=False, **kwargs)


def one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


# ---------------------------------------------------------------------------------------------------------
# Sources


def test_plain_files_are_one_document_each(tmp_path):
    (tmp_path / "a.txt").write_text("the cat sat")
    (tmp_path / "b.md").write_text("\ufeffthe dog ran")  # a BOM is dropped
    (tmp_path / "wiki.raw").write_text("red hill")
    docs = list(data.iter_documents([tmp_path / "a.txt", tmp_path / "b.md", tmp_path / "wiki.raw"]))
    assert docs == [("a.txt", "the cat sat"), ("b.md", "the dog ran"), ("wiki.raw", "red hill")]


def test_directory_is_recursive_sorted_and_skips_other_files(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "z.txt").write_text("z")
    (root / "sub" / "b.md").write_text("b")
    (root / "sub" / "a.jsonl").write_text(jsonl({"text": "one"}, {"text": "two"}))
    (root / "notes.csv").write_text("skipped")
    (root / ".hidden" / "x.txt").write_text("skipped")
    (root / ".y.txt").write_text("skipped")
    ids = [doc.doc_id for doc in data.iter_documents([root])]
    assert ids == ["corpus/sub/a.jsonl:1", "corpus/sub/a.jsonl:2", "corpus/sub/b.md", "corpus/z.txt"]


def test_tar_xz_members_and_jsonl_member(tmp_path):
    archive = write_tar(tmp_path / "books.tar.xz", {
        "docs/a.txt": b"the cat sat",
        "docs/lines.jsonl": jsonl({"text": "first"}, {"text": "second"}).encode(),
    })
    docs = list(data.iter_documents([archive]))
    assert docs == [
        ("books.tar.xz::docs/a.txt", "the cat sat"),
        ("books.tar.xz::docs/lines.jsonl:1", "first"),
        ("books.tar.xz::docs/lines.jsonl:2", "second"),
    ]


def test_jsonl_one_document_per_line_with_chosen_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(jsonl({"body": "the cat", "id": 1}) + "\n" + jsonl({"body": "a dog"}))
    docs = list(data.iter_documents([path], jsonl_field="body"))
    assert docs == [("c.jsonl:1", "the cat"), ("c.jsonl:3", "a dog")]  # blank line 2 skipped, numbering kept


def test_progress_bytes_add_up_to_the_disk_size(tmp_path):
    archive = write_tar(tmp_path / "b.tar.xz", {"docs/a.txt": b"x" * 5000})
    (tmp_path / "c.jsonl").write_text(jsonl({"text": "one"}, {"text": "two"}))
    seen = []
    list(data.iter_documents([archive, tmp_path / "c.jsonl"], on_bytes=seen.append))
    assert sum(seen) == archive.stat().st_size + (tmp_path / "c.jsonl").stat().st_size


# ---------------------------------------------------------------------------------------------------------
# Split


def test_split_is_deterministic_and_by_sha256(tmp_path, tok):
    (tmp_path / "c.jsonl").write_text(jsonl(*({"text": t} for t in sentences(0, 200))))
    cfg = config([tmp_path / "c.jsonl"], tok, val_fraction=0.3)
    first, second = data.plan_split(cfg), data.plan_split(cfg)
    assert first == second
    assert not set(first["train"]) & set(first["validation"])
    assert len(first["train"]) + len(first["validation"]) == 200
    assert 35 <= len(first["validation"]) <= 85
    # The rule, spelled out: the first 8 bytes of sha256(id) as a fraction of 2**64.
    import hashlib

    for doc_id in first["validation"][:5]:
        assert int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64 < 0.3


def test_holdout_and_exclude_patterns(tmp_path, tok):
    archive = write_tar(tmp_path / "b.tar.xz", {f"docs/{name}.txt": b"the cat" for name in "abcdef"})
    cfg = config([archive], tok, val_fraction=0.0, holdout=["docs/b", "docs/c"], exclude=["docs/c", "docs/d"])
    plan = data.plan_split(cfg)
    assert plan["validation"] == ["b.tar.xz::docs/b.txt"]  # exclude wins over holdout
    assert plan["excluded"] == ["b.tar.xz::docs/c.txt", "b.tar.xz::docs/d.txt"]
    assert plan["train"] == ["b.tar.xz::docs/a.txt", "b.tar.xz::docs/e.txt", "b.tar.xz::docs/f.txt"]


def test_a_single_string_is_one_source_and_one_pattern(tmp_path, tok):
    (tmp_path / "a.txt").write_text("the cat")
    cfg = config(str(tmp_path / "a.txt"), tok, holdout="a.txt")
    assert cfg.sources == (tmp_path / "a.txt",) and cfg.holdout == ("a.txt",)
    assert cfg.split_of("a.txt") == "validation"


# ---------------------------------------------------------------------------------------------------------
# Packing and cache


def corpus(tmp_path):
    """Files of varied length (some shorter than a sequence), a blank one, and a JSONL file."""
    src = tmp_path / "src"
    src.mkdir()
    for i, text in enumerate(sentences(1, 12)):
        (src / f"doc{i:02}.txt").write_text(" ".join(text.split()[: 3 + i]))
    (src / "blank.txt").write_text("  \n")
    (src / "more.jsonl").write_text(jsonl(*({"text": t} for t in sentences(2, 6))))
    return src


def test_packing_equals_documents_joined_by_eos(tmp_path, tok):
    src = corpus(tmp_path)
    splits = prepare([src], tok, tmp_path, seq_len=8, val_fraction=0.25)
    texts = {doc.doc_id: doc.text for doc in data.iter_documents([src])}
    eos = eos_of(tok)
    for split, dataset in splits.items():
        expected = [t for doc_id in dataset.doc_ids for t in ids_of(tok, texts[doc_id]) + [eos]]
        expected = expected[: len(expected) // 8 * 8]
        assert len(dataset) == len(expected) // 8
        got = np.concatenate([dataset[i] for i in range(len(dataset))]) if len(dataset) else np.zeros(0)
        assert got.tolist() == expected, split
        assert all(type(dataset[i]) is np.ndarray and dataset[i].dtype == np.int64 for i in range(len(dataset)))
    assert all(dataset[i].shape == (8,) for i in range(len(dataset)))
    assert "src/blank.txt" not in splits["train"].doc_ids + splits["validation"].doc_ids
    assert not set(splits["train"].doc_ids) & set(splits["validation"].doc_ids)
    assert splits["validation"].doc_ids  # 0.25 of 18 documents: some went there


def test_metadata_and_dtype(tmp_path, tok):
    splits = prepare([corpus(tmp_path)], tok, tmp_path, seq_len=8)
    meta = json.loads((splits["train"].path.parent / "meta.json").read_text())
    assert meta["seq_len"] == 8 and meta["dtype"] == "uint16" and meta["eos_id"] == eos_of(tok)
    train = meta["splits"]["train"]
    assert train["num_sequences"] == len(splits["train"]) and train["num_documents"] == len(train["doc_ids"])
    assert train["num_tokens"] == train["num_sequences"] * 8 + train["dropped_tokens"]
    assert meta["fingerprint"].startswith(splits["train"].path.parent.name)
    assert splits["train"].path.stat().st_size == len(splits["train"]) * 8 * 2
    assert data.token_dtype(65535) == np.uint16 and data.token_dtype(65536) == np.uint32


def test_explicit_eos_id_wins(tmp_path, tok):
    (tmp_path / "a.txt").write_text("the cat sat on the mat")
    splits = prepare([tmp_path / "a.txt"], tok, tmp_path, seq_len=7, val_fraction=0.0, eos_id=0)
    assert splits["train"][0].tolist() == ids_of(tok, "the cat sat on the mat") + [0]


def test_cache_is_reused_without_tokenizing(tmp_path, tok, monkeypatch):
    src = corpus(tmp_path)
    first = prepare([src], tok, tmp_path)
    meta = first["train"].path.parent / "meta.json"
    stamp = meta.stat().st_mtime_ns

    def must_not_run(*args):
        raise AssertionError("tokenized again although nothing changed")

    monkeypatch.setattr(data.cache, "_encode_batch", must_not_run)
    second = prepare([src], tok, tmp_path)
    assert second["train"].path == first["train"].path and meta.stat().st_mtime_ns == stamp
    assert np.array_equal(second["train"].rows, first["train"].rows)


def test_cache_is_rebuilt_when_a_source_changes(tmp_path, tok, monkeypatch):
    (tmp_path / "a.txt").write_text("the cat sat on the mat " * 4)
    first = prepare([tmp_path / "a.txt"], tok, tmp_path, val_fraction=0.0)
    (tmp_path / "a.txt").write_text("the dog ran over the hill " * 4)
    calls = []
    real = data.cache._encode_batch
    monkeypatch.setattr(data.cache, "_encode_batch", lambda *args: calls.append(1) or real(*args))
    second = prepare([tmp_path / "a.txt"], tok, tmp_path, val_fraction=0.0)
    assert calls and second["train"].path.parent != first["train"].path.parent
    assert second["train"][0].tolist() == ids_of(tok, "the dog ran over the hill " * 4)[:8]
    # Other settings are part of the key too.
    assert prepare([tmp_path / "a.txt"], tok, tmp_path, seq_len=4, val_fraction=0.0)["train"].seq_len == 4


def test_interrupted_build_leaves_no_complete_looking_cache(tmp_path, tok, monkeypatch):
    src = corpus(tmp_path)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(data.cache, "_encode_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare([src], tok, tmp_path)
    assert list((tmp_path / "cache").iterdir()) == []  # the staging folder is gone, nothing was published
    monkeypatch.undo()
    assert len(prepare([src], tok, tmp_path)["train"]) > 0


def test_load_eval_text_is_all_validation(tmp_path, tok):
    (tmp_path / "test.raw").write_text("\n".join(sentences(3, 10)))
    dataset = data.load_eval_text(tmp_path / "test.raw", tok.parent, 16, tmp_path / "cache", progress=False)
    assert dataset.doc_ids == ("test.raw",)
    assert len(dataset) == (10 * 12 + 1) // 16


# ---------------------------------------------------------------------------------------------------------
# Dataset access


@pytest.fixture
def packed(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(12 * 4, dtype=np.uint16).tofile(path)
    return data.PackedDataset(path, 4, "uint16", 12)


def test_getitem_and_pickling(packed):
    import pickle

    assert packed[1].tolist() == [4, 5, 6, 7] and packed[-1].tolist() == [44, 45, 46, 47]
    with pytest.raises(IndexError):
        packed[12]
    clone = pickle.loads(pickle.dumps(packed))
    assert clone[2].tolist() == packed[2].tolist()


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("seed", [None, 7])
def test_ddp_shards_are_disjoint_equal_and_cover(packed, world_size, seed):
    shards = [packed.shard_indices(rank, world_size, seed=seed, epoch=1) for rank in range(world_size)]
    flat = np.concatenate(shards)
    assert len(set(flat.tolist())) == len(flat)  # disjoint
    assert len({len(shard) for shard in shards}) == 1  # every rank runs the same number of steps
    assert len(flat) == 12 // world_size * world_size
    if 12 % world_size == 0:
        assert sorted(flat.tolist()) == list(range(12))
    again = [packed.shard_indices(rank, world_size, seed=seed, epoch=1) for rank in range(world_size)]
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))


def test_shuffled_batches_are_deterministic_per_seed_and_epoch(packed):
    def epoch(seed, number, **kwargs):
        return [batch.tolist() for batch in packed.batches(3, seed=seed, epoch=number, **kwargs)]

    assert epoch(0, 0) == epoch(0, 0)
    assert epoch(0, 0) != epoch(0, 1) and epoch(0, 0) != epoch(1, 0)
    batches = list(packed.batches(5, seed=0, epoch=0))
    assert len(batches) == 2 and batches[0].shape == (5, 4) and batches[0].dtype == np.int64
    assert len(list(packed.batches(5, seed=0, drop_last=False))) == 3
    rows = sorted(row for batch in epoch(0, 0) for row in batch)
    assert rows == [packed[i].tolist() for i in range(12)]
    ranks = [row for rank in range(2) for batch in epoch(0, 0, rank=rank, world_size=2) for row in batch]
    assert sorted(ranks) == rows


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line naming the path and the problem


def test_missing_source(tmp_path, tok):
    with pytest.raises(DataError) as excinfo:
        prepare([tmp_path / "nope.txt"], tok, tmp_path)
    one_line_error(excinfo, tmp_path / "nope.txt", "no such file or directory")


def test_missing_tokenizer(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError) as excinfo:
        prepare([tmp_path / "a.txt"], tmp_path / "tokenizer.json", tmp_path)
    one_line_error(excinfo, tmp_path / "tokenizer.json", "no such file")


def test_empty_corpus(tmp_path, tok):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as excinfo:
        prepare([tmp_path / "empty"], tok, tmp_path)
    one_line_error(excinfo, tmp_path / "empty", "no documents found")


def test_blank_or_all_excluded_corpus(tmp_path, tok):
    (tmp_path / "a.txt").write_text(" \n")
    (tmp_path / "b.txt").write_text("the cat")
    with pytest.raises(DataError) as excinfo:
        prepare([tmp_path / "a.txt", tmp_path / "b.txt"], tok, tmp_path, exclude=["b.txt"])
    one_line_error(excinfo, tmp_path / "a.txt", "none of the 2 documents", "1 match exclude", "1 are blank")


def test_zero_tokens(tmp_path, tok, monkeypatch):
    (tmp_path / "a.txt").write_text("the cat")
    monkeypatch.setattr(data.cache, "_encode_batch", lambda tokenizer, texts: [[] for _ in texts])
    with pytest.raises(DataError) as excinfo:
        prepare([tmp_path / "a.txt"], tok, tmp_path)
    one_line_error(excinfo, tmp_path / "a.txt", "zero tokens")


def test_non_utf8_file(tmp_path, tok):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError) as excinfo:
        prepare([tmp_path / "latin1.txt"], tok, tmp_path)
    one_line_error(excinfo, tmp_path / "latin1.txt", "not UTF-8", "byte 3")


def test_non_utf8_tar_member(tmp_path, tok):
    archive = write_tar(tmp_path / "b.tar.xz", {"docs/ok.txt": b"the cat", "docs/bad.txt": b"\xff\xfe"})
    with pytest.raises(DataError) as excinfo:
        prepare([archive], tok, tmp_path)
    one_line_error(excinfo, f"{archive}::docs/bad.txt", "not UTF-8")


def test_corrupt_archive(tmp_path, tok):
    (tmp_path / "b.tar.xz").write_bytes(b"not an archive at all")
    with pytest.raises(DataError) as excinfo:
        prepare([tmp_path / "b.tar.xz"], tok, tmp_path)
    one_line_error(excinfo, tmp_path / "b.tar.xz", "not a readable tar archive")


def test_train_split_shorter_than_one_sequence(tmp_path, tok):
    (tmp_path / "a.txt").write_text("the cat sat")
    with pytest.raises(DataError) as excinfo:
        prepare([tmp_path / "a.txt"], tok, tmp_path, seq_len=64, val_fraction=0.0)
    one_line_error(excinfo, tmp_path / "a.txt", "train split has 4 tokens", "seq_len=64")


def test_eval_text_shorter_than_one_sequence(tmp_path, tok):
    (tmp_path / "a.txt").write_text("the cat sat")
    with pytest.raises(DataError) as excinfo:
        data.load_eval_text(tmp_path / "a.txt", tok, 64, tmp_path / "cache", progress=False)
    one_line_error(excinfo, tmp_path / "a.txt", "validation split has 4 tokens", "lower seq_len")


def test_jsonl_line_not_json(tmp_path, tok):
    (tmp_path / "c.jsonl").write_text(jsonl({"text": "the cat"}) + "{oops\n")
    with pytest.raises(DataError) as excinfo:
        prepare([tmp_path / "c.jsonl"], tok, tmp_path)
    one_line_error(excinfo, f"{tmp_path / 'c.jsonl'}:2", "not valid JSON")


def test_jsonl_line_without_the_field(tmp_path, tok):
    (tmp_path / "c.jsonl").write_text(jsonl({"body": "the cat"}))
    with pytest.raises(DataError) as excinfo:
        prepare([tmp_path / "c.jsonl"], tok, tmp_path)
    one_line_error(excinfo, f"{tmp_path / 'c.jsonl'}:1", "no 'text' field", "body", "jsonl_field")


def test_eos_unknown_without_tokenizer_config(tmp_path):
    tok = make_tokenizer(tmp_path / "bare", with_config=False)
    (tmp_path / "a.txt").write_text("the cat")
    with pytest.raises(DataError) as excinfo:
        prepare([tmp_path / "a.txt"], tok, tmp_path)
    one_line_error(excinfo, tmp_path / "bare" / "tokenizer_config.json", "pass eos_id")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"seq_len": 1}, "seq_len=1"),
        ({"val_fraction": 1.0}, "val_fraction=1.0"),
        ({"holdout": [""]}, "holdout pattern ''"),
        ({"eos_id": -1}, "eos_id=-1"),
    ],
)
def test_config_validation(tmp_path, tok, kwargs, fragment):
    (tmp_path / "a.txt").write_text("the cat")
    with pytest.raises(DataError) as excinfo:
        data.CorpusConfig(**{"sources": [tmp_path / "a.txt"], "tokenizer_path": tok, "seq_len": 8, **kwargs})
    one_line_error(excinfo, fragment)


# ---------------------------------------------------------------------------------------------------------
# The shared corpora

SMOLLM2 = data_root() / "smollm2-135m-instruct" / "tokenizer.json"
needs_shared = pytest.mark.needs_data("gutenberg-fiction", "smollm2-135m-instruct/tokenizer.json")
AUSTEN = ("emma", "pride", "sense")


def test_default_corpora_follow_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTCACHE_DATA", str(tmp_path))
    with pytest.raises(DataError) as excinfo:
        data.default_gutenberg_sources()
    one_line_error(excinfo, "Gutenberg fiction", tmp_path / "gutenberg-fiction" / "british-novels.tar.xz",
                   "LATENTCACHE_DATA", "--data-root", "no Hugging Face Hub copy")
    with pytest.raises(DataError) as excinfo:
        data.wikitext_test_path()
    one_line_error(excinfo, "WikiText-2", tmp_path / "wikitext-2" / "raw" / "wiki.test.raw", "LATENTCACHE_DATA_HUB=1",
                   "latentcache[data]", "Salesforce/wikitext")
    monkeypatch.delenv("LATENTCACHE_DATA")
    monkeypatch.setenv("LATENTCACHE_SHARED", str(tmp_path))  # the older variable: the folder above data/
    with pytest.raises(DataError) as excinfo:
        data.default_gutenberg_sources()
    one_line_error(excinfo, tmp_path / "data" / "gutenberg-fiction" / "british-novels.tar.xz", "$LATENTCACHE_SHARED")


def test_default_corpora_are_read_from_a_data_root_laid_out_like_shared(tmp_path):
    corpus = tmp_path / "gutenberg-fiction"
    corpus.mkdir()
    for name in data.GUTENBERG_ARCHIVES:
        (corpus / name).write_bytes(b"")
    (corpus / "MANIFEST.tsv").write_text("collection_archive\tpath_in_archive\tbytes\tgit_blob_sha1\n")
    (tmp_path / "wikitext-2" / "raw").mkdir(parents=True)
    (tmp_path / "wikitext-2" / "raw" / "wiki.test.raw").write_text(" = A = \n")
    sources = data.default_gutenberg_sources(tmp_path)
    assert sources.paths == tuple(corpus / name for name in data.GUTENBERG_ARCHIVES)
    assert sources.exclude == defaults.GUTENBERG_CONTAINED and sources.holdout == defaults.GUTENBERG_HOLDOUT
    assert data.wikitext_test_path(tmp_path) == tmp_path / "wikitext-2" / "raw" / "wiki.test.raw"


def test_duplicates_are_found_by_author_and_title(tmp_path):
    manifest = tmp_path / "MANIFEST.tsv"
    manifest.write_text(
        "collection_archive\tpath_in_archive\tbytes\tgit_blob_sha1\n"
        "british-novels.tar.xz\tbritish-novels/Austen_Emma.txt\t1\tx\n"
        "british-novels.tar.xz\tbritish-novels/Eliot_Mill.txt\t1\tx\n"
        "gutenberg.tar.xz\tgutenberg/training/austen-emma.txt\t1\tx\n"
        "gutenberg.tar.xz\tgutenberg/training/austen-persuasion.txt\t1\tx\n"
        "haggard.tar.xz\thaggard/Emma 1.txt\t1\tx\n"
    )
    assert data.gutenberg_duplicates(manifest) == ("gutenberg.tar.xz::gutenberg/training/austen-emma.txt",)


@needs_shared
def test_gutenberg_split_keeps_each_austen_novel_on_one_side_and_holds_out_whole_books():
    sources = data.default_gutenberg_sources()
    cfg = data.CorpusConfig(sources.paths, SMOLLM2, 1024, sources.val_fraction, sources.holdout, sources.exclude)
    plan = data.plan_split(cfg)
    assert not set(plan["train"]) & set(plan["validation"])
    for title in AUSTEN:
        copies = {split: [i for i in ids if f"austen{title}" in i.lower().replace("_", "").replace("-", "")]
                  for split, ids in plan.items()}
        kept = copies["train"] + copies["validation"]
        assert len(kept) == 1, copies  # one edition, on one side
        assert len(copies["excluded"]) == 1 and copies["excluded"][0].startswith("gutenberg.tar.xz::")
    assert any("Austen_Pride" in i for i in plan["validation"])
    # Whole books: every validation document is an archive member (no JSONL line ids), from every archive.
    assert all("::" in i and not i.rsplit(":", 1)[-1].isdigit() for i in plan["validation"])
    assert {i.split("::")[0] for i in plan["validation"]} == set(data.GUTENBERG_ARCHIVES)
    assert len(plan["train"]) + len(plan["validation"]) + len(plan["excluded"]) == 106  # MANIFEST.tsv rows


@needs_shared
def test_wikitext_test_is_one_validation_document(tmp_path):
    dataset = data.load_eval_text(data.wikitext_test_path(), SMOLLM2, 1024, tmp_path / "cache", progress=False)
    assert dataset.doc_ids == ("wiki.test.raw",) and len(dataset) > 250 and dataset.dtype == np.uint16


@pytest.mark.slow
@needs_shared
def test_gutenberg_full_tokenization_with_smollm2(tmp_path):
    sources = data.default_gutenberg_sources()
    splits = data.prepare_corpus(
        tokenizer_path=SMOLLM2, seq_len=1024, cache_dir=tmp_path / "cache", progress=False, **sources.as_kwargs()
    )
    assert len(splits["train"]) * 1024 > 15_000_000 and len(splits["validation"]) * 1024 > 500_000
    assert splits["train"].dtype == np.uint16
    assert len(splits["validation"].doc_ids) == 6 and len(splits["train"].doc_ids) == 96
    assert (splits["train"].rows == 2).sum() >= 90  # <|im_end|> (tokenizer_config.json) ends each document
    assert os.path.isfile(splits["train"].path.parent / "meta.json")
