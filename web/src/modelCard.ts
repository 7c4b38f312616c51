// The model card (README.md of a fine-tune, GET .../model_card) as safe HTML:
// markdown-it with raw HTML off (any <tag> in the card shows as text) and its
// link check (no javascript: URLs); images only from `images` (the card's own
// PNG, fetched with the key), never from elsewhere.
import MarkdownIt from "markdown-it";

export interface CardParts {
  /** The YAML front matter's text (Hugging Face's metadata), or "" if none. */
  frontMatter: string;
  body: string;
}

/** The card's YAML front matter and the Markdown after it. */
export function splitFrontMatter(card: string): CardParts {
  const match = /^---\n([\s\S]*?)\n---\n?/.exec(card);
  if (!match) return { frontMatter: "", body: card };
  return { frontMatter: match[1], body: card.slice(match[0].length) };
}

/** The card's Markdown as HTML; an image whose source is not in `images` shows its alt text. */
export function renderCard(markdown: string, images: Record<string, string>): string {
  const md = new MarkdownIt({ html: false, linkify: false, typographer: false });
  md.renderer.rules.image = (tokens, idx) => {
    const token = tokens[idx];
    const src = images[token.attrGet("src") ?? ""];
    const alt = md.utils.escapeHtml(token.content);
    return src ? `<img src="${md.utils.escapeHtml(src)}" alt="${alt}" data-testid="model-card-image">` : `<em>${alt}</em>`;
  };
  return md.render(markdown);
}
