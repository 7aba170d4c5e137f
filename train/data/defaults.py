"""The shared corpora the project trains and evaluates on by default: Gutenberg fiction and WikiText-2."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from latentcache.catalog import locate
from latentcache.errors import DataError
from latentcache.train.data.config import PathLike

GUTENBERG_DIR = Path("gutenberg-fiction")  # under the data root (latentcache.paths.data_root)
GUTENBERG_ARCHIVES = ("british-novels.tar.xz", "haggard.tar.xz", "gutenberg.tar.xz")
# Whole books held out for validation, from all three archives (~3.2 MB of ~68 MB raw, about 5%):
# NLTK's own test selection (Chesterton's Father Brown, Milton's Poetical Works, Macbeth), one Austen, one
# Dickens and one Haggard novel.
GUTENBERG_HOLDOUT = (
    "gutenberg.tar.xz::gutenberg/testing/",
    "british-novels.tar.xz::british-novels/Austen_Pride.txt",
    "british-novels.tar.xz::british-novels/Dickens_Hard.txt",
    "haggard.tar.xz::haggard/Cleopatra 2769.txt",
)
# Containment the file names cannot reveal: Milton's Poetical Works (held out above) includes Paradise Lost,
# which is gutenberg/training/milton-paradise.txt, so that copy goes. (Whitman's three selections overlap each
# other too, but all of them stay in train, so nothing leaks.)
GUTENBERG_CONTAINED = ("gutenberg.tar.xz::gutenberg/training/milton-paradise.txt",)


@dataclass(frozen=True)
class SourceSet:
    """Source paths with the split rules that belong to them: ``prepare_corpus(**s.as_kwargs(), ...)``."""

    paths: tuple[Path, ...]
    val_fraction: float = 0.0
    holdout: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def as_kwargs(self) -> dict:
        return {"sources": self.paths, "val_fraction": self.val_fraction, "holdout": self.holdout,
                "exclude": self.exclude}


def default_gutenberg_sources(root: PathLike | None = None) -> SourceSet:
    """The three Gutenberg archives with a split that keeps every text on one side only.

    Duplicates: the Austen novels are in british-novels (``Austen_Emma.txt``) and in the NLTK selection
    (``austen-emma.txt``), different editions of the same text. ``gutenberg_duplicates`` finds them in
    MANIFEST.tsv by (author, title) and the NLTK copies are excluded, so each novel exists once, in british-novels;
    Pride and Prejudice is then held out, Emma and Sense and Sensibility train. Validation is the whole books of
    ``GUTENBERG_HOLDOUT`` and nothing else (``val_fraction=0``): a random hash split could put one of Whitman's
    overlapping selections on each side.

    ``root`` is the data root (default: ``latentcache.paths.data_root()``); a missing archive fails here, in
    one line, before any tokenizing.
    """
    paths = tuple(locate(f"{GUTENBERG_DIR.as_posix()}/{name}", root) for name in GUTENBERG_ARCHIVES)
    exclude = gutenberg_duplicates(locate(f"{GUTENBERG_DIR.as_posix()}/MANIFEST.tsv", root)) + GUTENBERG_CONTAINED
    return SourceSet(paths, 0.0, GUTENBERG_HOLDOUT, exclude)


def gutenberg_duplicates(manifest: Path) -> tuple[str, ...]:
    """Exclude patterns for the NLTK ``gutenberg/`` texts whose (author, title) is also in british-novels.

    Names are ``british-novels/Austen_Emma.txt`` and ``gutenberg/training/austen-emma.txt``: the key is the
    lower-cased stem split at its first ``_`` or ``-``. Haggard's files (``Title 1234.txt``) share no author.
    """
    try:
        rows = [line.split("\t") for line in manifest.read_text(encoding="utf-8").splitlines()[1:] if line]
    except OSError as exc:
        raise DataError(f"{manifest}: unreadable ({exc}); the Gutenberg corpus folder is incomplete") from exc
    british = {_author_title(path, "_") for archive, path, *_ in rows if archive == "british-novels.tar.xz"}
    return tuple(
        f"{archive}::{path}"
        for archive, path, *_ in rows
        if archive == "gutenberg.tar.xz" and _author_title(path, "-") in british
    )


def _author_title(member: str, separator: str) -> tuple[str, str]:
    author, _, title = Path(member).stem.lower().partition(separator)
    return author, title


def wikitext_test_path(root: PathLike | None = None) -> Path:
    """WikiText-2-raw test (``wiki.test.raw``) under the data root ``root``, a second validation set: pass it to
    ``load_eval_text``. With the Hub loader on, a missing file comes from ``Salesforce/wikitext``."""
    return locate("wikitext-2/raw/wiki.test.raw", root)
