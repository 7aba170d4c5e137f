"""Training text → packed, memory-mapped token sequences, cached on disk.

One module per concern: ``config`` (settings and the split rule), ``sources`` (documents), ``tokenize``,
``cache`` (fingerprint, build, publish), ``dataset`` (the packed dataset and batch orders), ``corpus`` (the
entry points) and ``defaults`` (the default Gutenberg/WikiText corpora, found under the data root through
``latentcache.catalog``); this package re-exports their API.

Sources (plain files, directories, tar archives read as streams, JSONL corpora) yield documents with stable
ids. Each document goes to one split by a sha256 of its id, or by explicit ``holdout``/``exclude`` id
substrings, so a book is never on both sides. Documents are tokenized with a Hugging Face ``tokenizer.json``
(the ``tokenizers`` library, not transformers), each followed by EOS, concatenated per split and cut into
``seq_len`` sequences (the tail is dropped). A cache folder is named by a fingerprint of every input; it is
written under a temporary name and renamed into place, so an interrupted run never leaves a cache that looks
complete, and an unchanged rerun tokenizes nothing.

Layout of ``<cache_dir>/<fingerprint[:16]>/``::

    train.bin        flat [num_sequences * seq_len] uint16 (uint32 when the vocabulary has >= 65536 tokens)
    validation.bin   the same for the validation split
    meta.json        seq_len, dtype, eos_id, per split: token/sequence/document counts and document ids;
                     the settings and the fingerprint

Document ids: ``name.txt`` for a file, ``dir/sub/name.txt`` for a file found in a directory,
``archive.tar.xz::member/path`` for a tar member, and ``...:LINE`` (1-based) for one line of a JSONL file.
"""

from __future__ import annotations

from latentcache.train.data.cache import corpus_fingerprint, open_cache
from latentcache.train.data.config import (
    DATA_FORMAT_VERSION,
    META_FILE,
    SPLITS,
    CorpusConfig,
    Document,
)
from latentcache.train.data.corpus import load_eval_text, prepare, prepare_corpus
from latentcache.train.data.dataset import (
    PackedDataset,
    leading_batches,
    sequence_order,
    shard_indices,
    stack_rows,
)
from latentcache.train.data.defaults import (
    GUTENBERG_ARCHIVES,
    GUTENBERG_DIR,
    SourceSet,
    default_gutenberg_sources,
    gutenberg_duplicates,
    wikitext_test_path,
)
from latentcache.train.data.sources import iter_documents, plan_split
from latentcache.train.data.tokenize import load_tokenizer, token_dtype

__all__ = [
    "DATA_FORMAT_VERSION",
    "GUTENBERG_ARCHIVES",
    "GUTENBERG_DIR",
    "META_FILE",
    "SPLITS",
    "CorpusConfig",
    "Document",
    "PackedDataset",
    "SourceSet",
    "corpus_fingerprint",
    "default_gutenberg_sources",
    "gutenberg_duplicates",
    "iter_documents",
    "leading_batches",
    "load_eval_text",
    "load_tokenizer",
    "open_cache",
    "plan_split",
    "prepare",
    "prepare_corpus",
    "sequence_order",
    "shard_indices",
    "stack_rows",
    "token_dtype",
    "wikitext_test_path",
]
