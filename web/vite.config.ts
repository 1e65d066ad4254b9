import { defineConfig, type HtmlTagDescriptor, type Plugin } from "vite";

// The head both pages share, written once: each page's HTML holds only its title and its script.
const SHARED_HEAD: HtmlTagDescriptor[] = [
  { tag: "meta", attrs: { charset: "utf-8" } },
  { tag: "meta", attrs: { name: "viewport", content: "width=device-width, initial-scale=1" } },
  { tag: "meta", attrs: { name: "referrer", content: "no-referrer" } },
  { tag: "link", attrs: { rel: "icon", href: "data:," } }, // no favicon request
].map((tag) => ({ ...tag, injectTo: "head-prepend" }));

const sharedHead: Plugin = { name: "parley-shared-head", transformIndexHtml: () => SHARED_HEAD };

// The gateway serves dist/ with a strict Content-Security-Policy (no inline script, no eval):
// nothing here may emit inline code.
export default defineConfig({
  plugins: [sharedHead],
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
