"""Model cards generated from the registry, and the static site that browses them."""

from medhub.cards.card import CardContext, front_matter, render_card, split_front_matter
from medhub.cards.catalog import build_cards, card_context, card_text, cards_dir, check_cards

__all__ = [
    "CardContext",
    "build_cards",
    "card_context",
    "card_text",
    "cards_dir",
    "check_cards",
    "front_matter",
    "render_card",
    "split_front_matter",
]
