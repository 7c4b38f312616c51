import { defineConfig } from "vitest/config";
import react from "@vitejs/plugin-react";
import openapi from "./openapi.json" with { type: "json" };
import { schemaHyperparameters } from "./src/hyperparameterSchema.ts";

// API for `npm run dev` / `npm run preview`; override with TUNEHOUSE_API=http://host:port
const target: string = (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env.TUNEHOUSE_API ?? "http://127.0.0.1:8000";
const proxy = { "/v1": target };

export default defineConfig({
  base: "/",
  plugins: [react()],
  // The New-job form's ranges, read from the API's schema (not the whole schema: it is 150 kB).
  define: { __API_HYPERPARAMETERS__: JSON.stringify(schemaHyperparameters(openapi)) },
  build: { outDir: "dist", chunkSizeWarningLimit: 1200 },
  server: { proxy },
  preview: { proxy },
  test: { environment: "node", include: ["src/**/*.test.ts", "src/**/*.test.tsx"] },
});
