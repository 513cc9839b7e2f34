"""From a split text data set to a saved checkpoint: train the tokenizer, the Transformer, fit and calibrate the
layered gate on texts, save.

The WordPiece tokenizer is trained on the training split only and saved as its JSON beside the weights; every
text is cut to its first ``max_length`` tokens ([CLS] included). The gate rejects a text with no readable token,
refers one longer than every training text or with more out-of-vocabulary words than any training text
(support), measures the density on the text's pooled encoder state (posterior mean) and takes the mutual
information of the served bank (``app.gate.text``), all under one false-positive budget.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from app.bnn.network import parameter_count
from app.bnn.transformer import BayesianTransformer
from app.checkpoint.io import save_checkpoint
from app.checkpoint.manifest import FORMAT_VERSION, Manifest, TaskInfo, TaskType, TextSchema, TokenizerFile, WeightsInfo
from app.data.text import TextDataset, TextSplit
from app.data.tokenizer import EncodedTexts, TextEncoder, train_tokenizer
from app.evaluate.scoring import ScoredSet
from app.evaluate.sequence_scoring import SequenceBankScorer
from app.evaluate.text_scoring import encoder_features, score_texts
from app.gate.gate import Density, GateTensors
from app.gate.spec import GateSpec
from app.gate.text import TextScreening, TextSupport
from app.train.calibrate import SERVER_BANK_SEED, Calibration, calibrate_gate
from app.train.config import TrainConfig
from app.train.loop import EpochLog, TrainResult
from app.train.pipeline import training_info
from app.train.text_loop import train_text

VOCAB_SIZE = 8000  # WordPiece tokens, specials included: 9.6% of training words split at this size (4000: 18%)
MAX_LENGTH = 64  # tokens read per text, [CLS] included: 99.9% of the training snippets fit
MAX_BYTES = 20_000  # a request's text, UTF-8: a long review's few pages; beyond is a 4xx, not an answer
MAX_TOKENS = 4096  # a request's text before the cut


def build_text_gate(
    model: BayesianTransformer,
    scorer: SequenceBankScorer,
    encoder: TextEncoder,
    dataset: TextDataset,
    train: EncodedTexts,
    support: TextSupport,
    target_fpr: float,
    on_step: Callable[[str], None] | None = None,
) -> tuple[GateSpec, GateTensors]:
    """The layered gate of a trained Transformer, calibrated on its served bank (``scorer``); ``train``: the
    training split as the network took it."""
    screening = TextScreening(support)

    def score(density: Density, split: TextSplit) -> ScoredSet:
        return score_texts(scorer, screening, density, encoder.encode(split.texts.tolist()))

    calibration = Calibration(
        screening=screening,
        density_input=encoder_features(model, train),
        train_epistemic=lambda: scorer(train.ids, train.lengths).epistemic,
        score=score,
        samples=scorer.samples,
        bank_seed=scorer.bank_seed,
        density_kind="text_encoder_mean",
        epistemic_score="mutual_information",
    )
    return calibrate_gate(calibration, dataset, target_fpr, on_step)


def train_text_checkpoint(
    dataset: TextDataset,
    config: TrainConfig,
    out: str | Path,
    name: str | None = None,
    version: str = "1",
    vocab_size: int = VOCAB_SIZE,
    max_length: int = MAX_LENGTH,
    on_epoch: Callable[[EpochLog], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> tuple[Manifest, TrainResult]:
    """Train a tokenizer and a Transformer of ``config.kind`` on ``dataset`` and write a checkpoint ``out``."""
    out = Path(out)
    if on_step is not None:
        on_step(f"training the tokenizer ({vocab_size:,} tokens) on {len(dataset.train):,} texts")
    encoder = TextEncoder(train_tokenizer(dataset.train.texts.tolist(), vocab_size).to_str(), max_length)
    train, val = encoder.encode(dataset.train.texts.tolist()), encoder.encode(dataset.val.texts.tolist())
    classes = len(dataset.labels)
    result = train_text(
        train.ids,
        train.lengths,
        dataset.train.y,
        val.ids,
        val.lengths,
        dataset.val.y,
        encoder.vocab_size,
        max_length,
        classes,
        config,
        on_epoch,
    )
    model = result.model
    assert isinstance(model, BayesianTransformer)
    samples = model.num_samples(config.default_samples)
    scorer = SequenceBankScorer(model, samples, SERVER_BANK_SEED, max_length=max_length)
    support = TextSupport.fit(train)
    gate, gate_tensors = build_text_gate(model, scorer, encoder, dataset, train, support, config.target_fpr, on_step)
    text = TextSchema(
        tokenizer=TokenizerFile(sha256="0" * 64, bytes=1),  # filled in by save_checkpoint
        vocab_size=encoder.vocab_size,
        max_length=max_length,
        max_bytes=MAX_BYTES,
        max_tokens=MAX_TOKENS,
        support=support,
    )
    task_type = TaskType.BINARY if classes == 2 else TaskType.MULTICLASS
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=name or out.name,
        version=version,
        created=datetime.now(UTC).replace(microsecond=0),
        kind=config.kind,
        network=model.spec,
        text=text,
        ranks=model.spec.map_ranks(),
        parameter_count=parameter_count(model),
        task=TaskInfo(type=task_type, target=dataset.target, labels=list(dataset.labels)),
        features=[],
        gate=gate,
        default_samples=samples,
        training=training_info(config, result),
        data=dataset.provenance,
        weights=WeightsInfo(sha256="0" * 64, bytes=1),  # filled in by save_checkpoint
    )
    if on_step is not None:
        on_step(f"saving {out}")
    return save_checkpoint(out, model, manifest, gate_tensors, encoder.json), result
