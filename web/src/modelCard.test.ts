import { describe, expect, it } from "vitest";
import { renderCard, splitFrontMatter } from "./modelCard";

const CARD = `---
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
library_name: peft
---

# ft:model

| name | value | origin | reason |
|---|---|---|---|
| n_epochs | 3 | auto | a \\| b |

![Loss and learning rate by step](training_curves.png)
`;

describe("the model card", () => {
  it("splits off the front matter", () => {
    const { frontMatter, body } = splitFrontMatter(CARD);
    expect(frontMatter).toBe("base_model: HuggingFaceTB/SmolLM2-135M-Instruct\nlibrary_name: peft");
    expect(body.trimStart().startsWith("# ft:model")).toBe(true);
    expect(splitFrontMatter("# no front matter").frontMatter).toBe("");
  });
  it("renders headings, tables and its own image", () => {
    const html = renderCard(splitFrontMatter(CARD).body, { "training_curves.png": "blob:http://h/1" });
    expect(html).toContain("<h1>ft:model</h1>");
    expect(html).toContain("<td>n_epochs</td>");
    expect(html).toContain("<td>a | b</td>");
    expect(html).toContain('<img src="blob:http://h/1" alt="Loss and learning rate by step" data-testid="model-card-image">');
  });
  it("never renders raw HTML, script URLs or outside images", () => {
    const html = renderCard('<script>alert(1)</script>\n\n[x](javascript:alert(1))\n\n<img src=x onerror=alert(1)>\n\n![t](https://evil.example/t.png)', {});
    expect(html).not.toContain("<script");
    expect(html).not.toContain("<img");
    expect(html).not.toContain('href="javascript:');
    expect(html).toContain("&lt;script&gt;");
    expect(html).toContain("<em>t</em>");
  });
});
