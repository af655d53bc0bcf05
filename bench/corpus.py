"""A deterministic corpus of realistic archived messages, for search benchmarks (10M by default).

Several tenants and business numbers; tens of thousands of contacts (subject ids); inbound and
outbound; origins api/app/history; texts in English, German, French, Spanish and Portuguese with
a Zipf-like word distribution and trading vocabulary; ~15 % with attachment metadata (captions,
file names); templates on some outbound messages; six months of sent times.

    python bench/corpus.py --messages 10000000 --out corpus.parquet     (write it as Parquet)
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.index import DOC_SCHEMA  # noqa: E402

START = datetime(2026, 3, 1)
SPAN_S = 183 * 86400
TENANTS = {"100000000000001": ["200000000000011", "200000000000012"],
           "100000000000002": ["200000000000021", "200000000000022"],
           "100000000000003": ["200000000000031", "200000000000032"]}
NUMBERS = [(t, n) for t, ns in TENANTS.items() for n in ns]
LANGUAGES = {
    "en": ("please confirm the trade order for shares at market open close price statement account call me "
           "tomorrow today thanks ok yes no send buy sell limit stop portfolio bond fund client meeting "
           "report invoice payment transfer balance update can you check my position risk margin fee rate "
           "is the was have will be on in at to of and a an with from by this that it we you i"),
    "de": ("bitte bestätigen sie den auftrag für aktien zum kurs heute morgen danke konto anruf kaufen "
           "verkaufen depot anleihe fonds termin bericht rechnung zahlung überweisung saldo ich wir sie "
           "und der die das ein eine mit von zu auf ist war haben werden"),
    "fr": ("merci de confirmer l ordre pour les actions au cours d ouverture compte appel demain aujourd hui "
           "acheter vendre portefeuille obligation fonds rendez vous rapport facture paiement virement solde "
           "je nous vous et le la les un une avec de à pour est était"),
    "es": ("por favor confirme la orden de acciones al precio de apertura cuenta llamada mañana hoy gracias "
           "comprar vender cartera bono fondo reunión informe factura pago transferencia saldo yo nosotros "
           "usted y el la los un una con de a para es"),
    "pt": ("por favor confirme a ordem de ações no preço de abertura conta ligação amanhã hoje obrigado "
           "comprar vender carteira título fundo reunião relatório fatura pagamento transferência saldo eu "
           "nós você e o a os um uma com de para é"),
}
PHRASES = ["confirm the trade", "market open", "call me tomorrow", "bitte bestätigen sie", "merci de confirmer",
           "por favor confirme", "send the statement", "limit order", "check my position", "wire transfer"]
TEMPLATES = ["trade_confirmation", "statement_ready", "appointment_reminder", "kyc_update"]
ATTACH = [("image", "photo of the {w} ticket"), ("document", "{w}_statement_2026.pdf"), ("audio", ""),
          ("video", "{w} walkthrough")]


def _vocab(seed: int) -> dict[str, tuple[list[str], list[float]]]:
    out = {}
    for lang, words in LANGUAGES.items():
        ws = list(dict.fromkeys(words.split()))
        random.Random(seed + len(lang)).shuffle(ws)
        weights = list(itertools.accumulate(1.0 / (rank + 1) ** 1.07 for rank in range(len(ws))))  # Zipf-like
        out[lang] = (ws, weights)
    return out


def contacts(count: int = 60_000) -> list[str]:
    return [f"01J{i:023d}" for i in range(count)]  # subject ids (ULID-shaped)


def generate(messages: int, seed: int = 42, batch: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of index documents (tuples in `audit.index.DOC_COLUMNS` order), oldest first."""
    rng = random.Random(seed)
    vocab = _vocab(seed)
    people = contacts()
    langs = list(LANGUAGES)
    lang_cum = list(itertools.accumulate([0.55, 0.15, 0.12, 0.1, 0.08]))
    out: list[tuple[Any, ...]] = []
    for i in range(messages):
        tenant, number = NUMBERS[i % len(NUMBERS)]
        person = people[int(rng.paretovariate(1.2) * 37) % len(people)]  # some contacts write far more
        lang = rng.choices(langs, cum_weights=lang_cum)[0]
        ws, cum = vocab[lang]
        words = rng.choices(ws, cum_weights=cum, k=rng.randint(3, 24))
        if rng.random() < 0.08:
            phrase = rng.choice(PHRASES)
            at = rng.randint(0, len(words))
            words[at:at] = phrase.split()
        inbound = rng.random() < 0.55
        origin = "history" if rng.random() < 0.2 else ("api" if inbound or rng.random() < 0.6 else "app")
        mtype, text = "text", " ".join(words)
        template = None
        if rng.random() < 0.15:
            mtype, caption = rng.choice(ATTACH)
            text = caption.format(w=rng.choice(ws)) if caption else ""
        elif not inbound and origin == "api" and rng.random() < 0.3:
            mtype, template = "template", rng.choice(TEMPLATES)
        sent = START + timedelta(seconds=(i * SPAN_S) // messages + rng.randint(0, 59))
        bi = f"bi{int(person[3:]) :020d}"
        out.append((i + 1, number, i // len(NUMBERS), f"message:wamid.B{i:012d}", tenant, f"wamid.B{i:012d}",
                    person, "inbound" if inbound else "outbound", origin, bi if inbound else None,
                    None if inbound else bi, mtype, None, template, "en" if template else None, sent,
                    sent + timedelta(seconds=rng.randint(1, 30)), mtype in ("image", "document", "audio", "video"),
                    f"subj:{person}", text))
        if len(out) == batch:
            yield out
            out = []
    if out:
        yield out


def main() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    with pq.ParquetWriter(args.out, DOC_SCHEMA, compression="zstd") as w:
        for docs in generate(args.messages, args.seed):
            w.write_table(pa.table(list(zip(*docs, strict=True)), schema=DOC_SCHEMA))
    print(f"{args.messages} messages in {time.perf_counter() - t0:.1f} s → {args.out} "
          f"({args.out.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
