import { renderToStaticMarkup } from "react-dom/server";
import { describe, expect, it } from "vitest";
import { grantee, sharedByLabel, ShareList } from "./ModelSharing";

const toBob = { object: "model.share" as const, id: "share_1", model: "ft:m:alice:x:ftjob-1", user: "bob", everyone: false, created_at: 1 };
const toEveryone = { ...toBob, id: "share_2", user: null, everyone: true };

describe("model sharing", () => {
  it("names who each share is for", () => {
    expect(grantee(toBob)).toBe("bob");
    expect(grantee(toEveryone)).toBe("Everyone in this deployment");
  });

  it("lists the shares with a revoke button each, or says it is not shared", () => {
    const html = renderToStaticMarkup(<ShareList shares={[toBob, toEveryone]} onRevoke={() => {}} />);
    expect(html.match(/data-testid="share-row"/g)).toHaveLength(2);
    expect(html).toContain('aria-label="Revoke bob"');
    expect(html).toContain('aria-label="Revoke Everyone in this deployment"');
    expect(renderToStaticMarkup(<ShareList shares={[]} onRevoke={() => {}} />)).toContain("Not shared");
  });

  it("marks models shared with you by their owner, and only those", () => {
    expect(sharedByLabel({ shared_by: "alice" })).toBe("shared by alice");
    expect(sharedByLabel({ shared_by: null })).toBeNull();
    expect(sharedByLabel({})).toBeNull();
  });
});
