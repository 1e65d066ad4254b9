import { defineConfig } from "vite";

// The gateway serves dist/ with a strict Content-Security-Policy (no inline script, no eval):
// nothing here may emit inline code.
export default defineConfig({
  build: {
    outDir: "dist",
    emptyOutDir: true,
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    sourcemap: false,
    // Two pages: the chat client (index.html) and the operator's console (console.html).
    rolldownOptions: {
      input: { main: "index.html", console: "console.html" },
    },
  },
});
