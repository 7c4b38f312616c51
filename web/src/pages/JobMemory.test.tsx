import { renderToStaticMarkup } from "react-dom/server";
import { describe, expect, it } from "vitest";
import type { MemoryEstimate, MemoryPreview } from "../types";
import { formatBytes, MemoryChart, MemoryFit } from "./JobMemory";

const MIB = 1 << 20;
const estimate: MemoryEstimate = {
  peak_bytes: 3000 * MIB,
  parts: { runtime: 700 * MIB, weights: 513 * MIB, activations: 1787 * MIB },
  gradient_checkpointing: false,
  device: "cpu",
  adapter: "lora",
  measured_as: "peak RSS of the training process",
  assumptions: ["4 rows of 256 tokens per forward pass, 1024 of them trained"],
};

describe("memory", () => {
  it("formats bytes as MiB below a GiB and GiB above", () => {
    expect(formatBytes(512 * MIB)).toBe("512 MiB");
    expect(formatBytes(3 * 1024 * MIB)).toBe("3.0 GiB");
    expect(formatBytes(null)).toBe("—");
  });

  it("shows the preview's fit verdict and reason", () => {
    const memory: MemoryPreview = { estimate, fits: false, device: null, reason: "needs about 2.9 GiB of the 1.0 GiB", devices: [] };
    const html = renderToStaticMarkup(<MemoryFit memory={memory} />);
    expect(html).toContain('data-fits="false"');
    expect(html).toContain("does not fit");
    expect(html).toContain("2.9 GiB");
    expect(renderToStaticMarkup(<MemoryFit memory={{ ...memory, fits: "unknown", estimate: null }} />)).toContain("fit unknown");
  });

  it("puts the measured peak beside the recipe's estimate", () => {
    const metrics = [
      { step: 1, peak_memory_bytes: 2000 * MIB, device_memory_bytes: 8192 * MIB },
      { step: 2, peak_memory_bytes: 2500 * MIB, device_memory_bytes: 8192 * MIB },
    ];
    const html = renderToStaticMarkup(<MemoryChart metrics={metrics} recipe={{ memory: { estimate } }} />);
    expect(html).toContain("Measured peak <strong class=\"mono\">2.4 GiB</strong>");
    expect(html).toContain("estimate / measured 1.20");
    expect(html).toContain("device 8.0 GiB");
  });

  it("shows nothing before any step or estimate", () => {
    expect(renderToStaticMarkup(<MemoryChart metrics={[]} recipe={undefined} />)).toBe("");
  });
});
