import { describe, expect, it } from "vitest";
import type { ModelObject } from "../types";
import { baseChoices } from "./JobLineage";

const model = (id: string, kind: ModelObject["kind"]): ModelObject => ({ id, kind, object: "model", created: 0, owned_by: "me" });

describe("the New job page's base model choices", () => {
  const models = [model("tiny", "base"), model("ft:tiny:me::ftjob-1", "fine-tune"), model("ft:tiny:me::ftjob-1:ckpt-step-2", "checkpoint")];

  it("offers base models and fine-tunes, not every checkpoint", () => {
    expect(baseChoices(models, null)?.map((m) => m.id)).toEqual(["tiny", "ft:tiny:me::ftjob-1"]);
    expect(baseChoices(undefined, null)).toBeUndefined();
  });

  it("offers a checkpoint model when it is the one picked (a 'Fine-tune further' link)", () => {
    expect(baseChoices(models, "ft:tiny:me::ftjob-1:ckpt-step-2")?.map((m) => m.kind)).toEqual(["base", "fine-tune", "checkpoint"]);
  });
});
