// Parley in the browser: log in, channels, history, live messages, send. Every call is the
// gateway's own API (api.ts); every piece of user content reaches the page as text (dom.ts).

import "./style.css";
import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import * as api from "./api.js";
import { gateway, withRefresh, type Session } from "./api.js";
import { append, clear, fillList, h, labelled, labelledRow, on } from "./dom.js";
import { LiveStream, type ConnectionState } from "./live.js";
import { renderSettings } from "./settings.js";
import { consoleLink } from "./console/entry.js";
import type { ClientEvent, MembershipChange } from "./gen/parley/gateway/v1/gateway_pb.js";
import {
  InvitationSchema,
  type Channel,
  type ChatMessage,
  type Invitation,
  type ReactionCount,
} from "./gen/parley/messaging/v1/messaging_pb.js";

const PAGE = 50;
const TAKE_UP_READS = 5;
const REACTION = "👍";
const ENCRYPTED_NOTE =
  "End-to-end encrypted. This browser cannot decrypt it: no vetted build of the Olm/Megolm library is available for the web client yet. Read and write it with the parley CLI or the Python SDK.";

interface ChannelView {
  channel: Channel;
  /** Where the "new messages" line goes: the read marker when the channel was opened. */
  readAtOpen?: bigint;
  messages: Map<bigint, ChatMessage>;
  loaded: boolean;
  hasMore: boolean;
  /** Other members' read markers (user id -> channel_seq), as the live stream moves them. */
  readers: Map<string, bigint>;
}

function newView(channel: Channel): ChannelView {
  return { channel, messages: new Map(), loaded: false, hasMore: true, readers: new Map() };
}

/** The message held, with what a live update says changed: an update carries only its news (a
 * redaction has no sender, an edit no thread or time), the rest stays as it was. */
function merged(known: ChatMessage | undefined, m: ChatMessage): ChatMessage {
  if (!known) return m;
  return {
    ...m,
    senderId: known.senderId || m.senderId,
    senderName: m.senderName || known.senderName,
    sentAt: m.sentAt ?? known.sentAt,
    threadRootSeq: m.threadRootSeq || known.threadRootSeq,
    replyCount: Math.max(m.replyCount, known.replyCount),
    edited: m.edited || known.edited,
    reactions: m.reactions.length > 0 || m.redacted ? m.reactions : known.reactions,
  };
}

class App {
  private session: Session | null = null;
  private readonly channels = new Map<string, ChannelView>();
  private readonly names = new Map<string, string>();
  /** Channels this user was invited to and has not joined (ListInvitations, and live ones). */
  private readonly invitations = new Map<string, Invitation>();
  private current = "";
  private live: LiveStream | null = null;
  private readonly root: HTMLElement;
  private statusEl = h("p", { id: "connection", role: "status", class: "state connecting" }, "Connecting…");
  private navList = h("ul", { class: "channels" });
  private invitationList = h("ul", { class: "invitations", "aria-label": "Invitations" });
  private mainEl = h("main", { id: "main", tabindex: "-1" });
  private threadEl = h("aside", { class: "thread", "aria-label": "Thread", hidden: true });
  private thread: { channelId: string; rootSeq: bigint } | null = null;
  private logEl: HTMLDivElement | null = null;
  private headEl: HTMLDivElement = h("div", { class: "channel-head" });
  private membersOpen = false;
  private noticeEl = h("p", { class: "notice", role: "alert" });
  private loadingOlder = false;
  private markTimer: number | undefined;

  constructor(root: HTMLElement) {
    this.root = root;
  }

  async boot(): Promise<void> {
    // A session this browser already holds (the HttpOnly cookie): no password asked again.
    const session = await api.refresh().catch(() => null);
    if (session) {
      await this.enter(session);
    } else {
      this.showLogin();
    }
  }

  // -- logging in --

  private showLogin(message = ""): void {
    this.live?.stop();
    this.live = null;
    clear(this.root);
    const user = h("input", { id: "username", name: "username", autocomplete: "username", required: true });
    const pass = h("input", {
      id: "password",
      name: "password",
      type: "password",
      autocomplete: "current-password",
      required: true,
    });
    const code = h("input", { id: "code", name: "code", autocomplete: "one-time-code", inputmode: "text" });
    const codeRow = labelledRow("Two-factor code (or a recovery code)", code, true);
    const error = h("p", { class: "error", role: "alert" }, message);
    const submit = h("button", { type: "submit" }, "Log in");
    const register = h("button", { type: "button", class: "link" }, "Create an account with an invitation");
    on(register, "click", () => this.showRegister());
    const form = h(
      "form",
      { class: "login", "aria-labelledby": "login-title" },
      h("h1", { id: "login-title" }, "Log in to Parley"),
      labelledRow("Username", user),
      labelledRow("Password", pass),
      codeRow,
      error,
      submit,
      h("p", { class: "hint" }, "Accounts are created by your operator (parley admin create-user) or by invitation."),
      register,
    );
    on(form, "submit", (event) => {
      event.preventDefault();
      submit.disabled = true;
      error.textContent = "";
      const value = code.value.trim();
      const totp = /^\d{6}$/.test(value) ? value : "";
      const recovery = value && !totp ? value : "";
      api
        .login(user.value.trim(), pass.value, totp, recovery)
        .then((session) => this.enter(session))
        .catch((err: unknown) => {
          submit.disabled = false;
          if (api.isMfaChallenge(err) && codeRow.hidden) {
            codeRow.hidden = false;
            error.textContent = "This account uses two-factor authentication: enter the code from your app.";
            code.focus();
            return;
          }
          error.textContent = api.describe(err);
        });
    });
    append(this.root, h("div", { class: "center" }, form));
    user.focus();
  }

  private showRegister(): void {
    clear(this.root);
    const user = h("input", { id: "new-username", autocomplete: "username", required: true });
    const pass = h("input", { id: "new-password", type: "password", autocomplete: "new-password", required: true });
    const invite = h("input", { id: "invite", autocomplete: "off" });
    const error = h("p", { class: "error", role: "alert" });
    const submit = h("button", { type: "submit" }, "Create account");
    const back = h("button", { type: "button", class: "link" }, "Back to log in");
    on(back, "click", () => this.showLogin());
    const form = h(
      "form",
      { class: "login", "aria-labelledby": "register-title" },
      h("h1", { id: "register-title" }, "Create your Parley account"),
      labelledRow("Username", user),
      labelledRow("Password", pass),
      labelledRow("Invitation code", invite),
      error,
      submit,
      back,
    );
    on(form, "submit", (event) => {
      event.preventDefault();
      submit.disabled = true;
      error.textContent = "";
      const username = user.value.trim();
      gateway
        .register({ username, password: pass.value, inviteCode: invite.value.trim() })
        .then(() => api.login(username, pass.value))
        .then((session) => this.enter(session))
        .catch((err: unknown) => {
          submit.disabled = false;
          error.textContent = api.describe(err);
        });
    });
    append(this.root, h("div", { class: "center" }, form));
    user.focus();
  }

  private async enter(session: Session): Promise<void> {
    this.session = session;
    if (!session.username) session.username = (await this.nameOf([session.userId])).get(session.userId) ?? "";
    this.names.set(session.userId, session.username);
    this.renderShell();
    await this.loadChannels();
    await this.loadInvitations();
    this.live = new LiveStream(
      {
        event: (e) => this.onEvent(e),
        state: (s, d) => this.setState(s, d),
        resumed: async () => {
          await this.loadChannels();
          await this.loadInvitations();
        },
      },
      () => [...this.channels.keys()],
    );
    this.live.start();
    if (session.mfaEnrolmentRequired) this.openSettings("Your role requires two-factor authentication: enrol now.");
  }

  // -- the shell: header, channel list, main pane --

  private renderShell(): void {
    clear(this.root);
    const logout = h("button", { type: "button", class: "link" }, "Log out");
    on(logout, "click", () => {
      this.live?.stop();
      void api.logout().finally(() => {
        this.channels.clear();
        this.invitations.clear();
        this.current = "";
        this.closeThread(); // the next login starts with none open
        this.showLogin();
      });
    });
    const settings = h("button", { type: "button", class: "link" }, "Settings");
    on(settings, "click", () => this.openSettings());
    const header = h(
      "header",
      { class: "top" },
      h("span", { class: "brand" }, "Parley"),
      this.statusEl,
      h("span", { class: "me" }, `Signed in as ${this.session?.username ?? ""}`),
      consoleLink(this.session?.role ?? ""),
      settings,
      logout,
    );
    const create = this.smallForm("new-channel", "New channel name", "Create", async (name) => {
      const channel = await withRefresh(() => gateway.createChannel({ name }));
      this.addChannel(channel);
      await this.open(channel.channelId);
    });
    const join = this.smallForm("join-channel", "Join a channel by its id", "Join", async (channelId) => {
      const channel = await withRefresh(() => gateway.joinChannel({ channelId }));
      this.addChannel(channel);
      await this.open(channel.channelId);
    });
    const nav = h("nav", { "aria-label": "Channels" }, h("h2", {}, "Channels"), this.navList, this.invitationList, create, join);
    append(this.root, header, h("div", { class: "layout" }, nav, this.mainEl, this.threadEl), this.noticeEl);
  }

  private smallForm(id: string, label: string, action: string, run: (value: string) => Promise<void>): HTMLFormElement {
    const input = h("input", { id, name: id, required: true, autocomplete: "off" });
    const button = h("button", { type: "submit" }, action);
    const form = h("form", { class: "small" }, ...labelled(label, input), button);
    on(form, "submit", (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      button.disabled = true;
      run(value)
        .then(() => {
          input.value = "";
        })
        .catch((err: unknown) => this.notice(api.describe(err)))
        .finally(() => {
          button.disabled = false;
        });
    });
    return form;
  }

  private notice(text: string): void {
    this.noticeEl.textContent = text;
  }

  private setState(state: ConnectionState, detail: string): void {
    this.statusEl.className = `state ${state}`;
    this.statusEl.textContent = detail;
    this.statusEl.dataset.state = state;
  }

  // -- channels --

  /** Reads the channel list again. When channels came or went the live stream subscribes again
   * to cover them (a stream covers the channels it started with). */
  private async loadChannels(): Promise<void> {
    const mine = await withRefresh(() => gateway.listMyChannels({})).catch((err: unknown) => {
      this.notice(api.describe(err));
      return null;
    });
    if (mine === null) return;
    const seen = new Set<string>();
    for (const channel of mine.channels) {
      seen.add(channel.channelId);
      const view = this.channels.get(channel.channelId);
      if (view) {
        if (view.channel.lastSeq > channel.lastSeq) {
          // The stream has shown newer messages than this answer knows of: their count stays.
          channel.lastSeq = view.channel.lastSeq;
          channel.unreadCount = view.channel.unreadCount;
        }
        view.channel = channel;
      } else {
        this.channels.set(channel.channelId, newView(channel));
      }
      this.invitations.delete(channel.channelId);
    }
    for (const id of [...this.channels.keys()]) if (!seen.has(id)) this.channels.delete(id);
    this.live?.sync();
    const unnamed = mine.channels.filter((c) => c.direct).flatMap((c) => c.memberIds.filter((u) => !this.names.has(u)));
    if (unnamed.length > 0) await this.nameOf([...new Set(unnamed)].slice(0, 200));
    this.renderChannels();
    if (this.current && !this.channels.has(this.current)) this.current = "";
    if (this.current) {
      await this.loadNewer(this.current);
    } else if (this.mainEl.querySelector("#settings-title") === null) {
      // Nothing open (and not in Settings): the first channel, or what to do without one.
      const first = [...this.channels.values()].sort(byName)[0];
      if (first) await this.open(first.channel.channelId);
      else this.renderEmpty();
    }
  }

  /** A channel this user came into elsewhere (joined by the CLI, a conversation someone started):
   * the list read again, and the live stream subscribed again to cover it. Messaging may list it
   * a moment after the event that told of it (it applies its own write once the log has it), so
   * the list is read again, a few times at most, until it does. */
  private async takeUp(channelId: string): Promise<void> {
    for (let attempt = 0; attempt < TAKE_UP_READS && !this.channels.has(channelId); attempt += 1) {
      await this.loadChannels();
    }
  }

  private addChannel(channel: Channel): void {
    const known = this.channels.get(channel.channelId);
    if (known) known.channel = channel;
    else this.channels.set(channel.channelId, newView(channel));
    this.invitations.delete(channel.channelId);
    this.renderChannels();
    this.live?.restart();
  }

  private renderChannels(): void {
    fillList(this.navList, [...this.channels.values()].sort(byName), (view) => this.channelItem(view));
    fillList(this.invitationList, this.invitations.values(), (invitation) => this.invitationItem(invitation));
  }

  private channelItem(view: ChannelView): HTMLLIElement {
    const c = view.channel;
    const unread = c.channelId === this.current ? 0n : c.unreadCount;
    const label = this.title(c);
    const button = h(
      "button",
      {
        type: "button",
        class: c.channelId === this.current ? "channel current" : "channel",
        "aria-current": c.channelId === this.current ? "page" : undefined,
        "data-channel-id": c.channelId,
      },
      h("span", { class: "name" }, label),
      c.encrypted ? h("span", { class: "lock", title: "end-to-end encrypted" }, " 🔒") : null,
      unread > 0n ? h("span", { class: "unread", "aria-label": `${unread} unread` }, String(unread)) : null,
    );
    on(button, "click", () => void this.open(c.channelId));
    return h("li", {}, button);
  }

  /** The pending invitations as messaging lists them (with the channel's name), those made while
   * the page was closed included; each inviter named. Returns whether `channelId` is among them. */
  private async loadInvitations(channelId = ""): Promise<boolean> {
    const reply = await withRefresh(() => gateway.listInvitations({})).catch((err: unknown) => {
      this.notice(api.describe(err));
      return null;
    });
    if (reply === null) return false;
    this.invitations.clear();
    for (const invitation of reply.invitations) {
      if (!this.channels.has(invitation.channelId)) this.invitations.set(invitation.channelId, invitation);
    }
    const inviters = reply.invitations.map((i) => i.invitedBy).filter((u) => !this.names.has(u));
    if (inviters.length > 0) await this.nameOf([...new Set(inviters)].slice(0, 200));
    this.renderChannels();
    return reply.invitations.some((i) => i.channelId === channelId);
  }

  /** An invitation the live stream told of: listed at once, then read with the channel's name
   * (messaging may list it a moment after the event, as for takeUp). */
  private async takeUpInvitation(channelId: string, inviter: string): Promise<void> {
    this.invitations.set(channelId, create(InvitationSchema, { channelId, invitedBy: inviter }));
    await this.nameOf([inviter].filter((u) => !this.names.has(u)));
    this.renderChannels();
    for (let attempt = 0; attempt < TAKE_UP_READS; attempt += 1) {
      if (await this.loadInvitations(channelId)) return;
    }
  }

  private invitationItem(invitation: Invitation): HTMLLIElement {
    const { channelId } = invitation;
    const join = h("button", { type: "button", class: "small" }, "Join");
    on(join, "click", () => this.enterChannel(() => gateway.joinChannel({ channelId })));
    const decline = h("button", { type: "button", class: "small link" }, "Decline");
    on(decline, "click", () => {
      decline.disabled = true;
      withRefresh(() => gateway.declineInvitation({ channelId }))
        .then(() => {
          this.invitations.delete(channelId);
          this.renderChannels();
        })
        .catch((err: unknown) => {
          decline.disabled = false;
          this.notice(api.describe(err));
        });
    });
    const who = this.names.get(invitation.invitedBy) ?? invitation.invitedBy;
    const where = invitation.channelName ? `#${invitation.channelName}` : "a channel";
    return h(
      "li",
      { class: "invitation", "data-channel-id": channelId },
      h("span", { class: "what" }, `${who} invited you to ${where}`),
      " ",
      h("span", { class: "actions" }, join, " ", decline),
    );
  }

  /** A channel the user has just joined or started here: listed, covered by the stream, open. */
  private enterChannel(call: () => Promise<Channel>): void {
    withRefresh(call)
      .then(async (channel) => {
        this.addChannel(channel);
        await this.open(channel.channelId);
      })
      .catch((err: unknown) => this.notice(api.describe(err)));
  }

  private renderEmpty(): void {
    clear(this.mainEl);
    append(
      this.mainEl,
      h(
        "section",
        { class: "empty" },
        h("h2", {}, "No channels yet"),
        h(
          "p",
          {},
          "Create a channel with the form on the left, join one with the id someone shares with you (the CLI prints it: parley channels), or accept an invitation listed there.",
        ),
      ),
    );
  }

  private async open(channelId: string): Promise<void> {
    const view = this.channels.get(channelId);
    if (!view) return;
    this.current = channelId;
    if (this.thread?.channelId !== channelId) this.closeThread(); // a thread belongs to its channel
    view.readAtOpen = view.channel.unreadCount > 0n ? view.channel.readSeq : undefined;
    view.channel.unreadCount = 0n;
    this.renderChannels();
    this.renderChannel(view);
    if (!view.loaded) await this.loadLatest(view);
    this.renderMessages(view, "bottom");
    this.markRead(view);
  }

  private renderChannel(view: ChannelView): void {
    const c = view.channel;
    clear(this.mainEl);
    const log = h("div", { class: "messages", role: "log", "aria-label": `Messages in ${c.name}`, tabindex: "0" });
    on(log, "scroll", () => {
      if (log.scrollTop < 40) void this.loadOlder(view);
    });
    this.logEl = log;
    this.headEl = h("div", { class: "channel-head" });
    this.renderHead(view);
    append(this.mainEl, this.headEl, log, this.composer(view));
  }

  /** The channel's name, topic and members: drawn again as they change, the composer untouched. */
  private renderHead(view: ChannelView): void {
    const c = view.channel;
    clear(this.headEl);
    append(
      this.headEl,
      h("h2", { id: "channel-title" }, this.title(c)),
      c.topic ? h("p", { class: "topic" }, c.topic) : null,
      h("p", { class: "meta" }, `channel id: ${c.channelId} · ${c.memberIds.length} ${c.memberIds.length === 1 ? "member" : "members"}`),
      this.membersButton(view),
    );
  }

  private composer(view: ChannelView): HTMLElement {
    const c = view.channel;
    if (c.encrypted) {
      return h("p", { class: "encrypted-note" }, ENCRYPTED_NOTE);
    }
    const box = h("textarea", {
      id: "composer",
      name: "message",
      rows: 2,
      placeholder: `Message # ${c.name}`,
      "aria-describedby": "composer-help",
    });
    const send = h("button", { type: "submit" }, "Send");
    const form = h(
      "form",
      { class: "composer" },
      h("label", { for: "composer", class: "visually-hidden" }, `Message # ${c.name}`),
      box,
      send,
      h("p", { id: "composer-help", class: "hint" }, "Enter sends, Shift+Enter starts a new line."),
    );
    this.sendsFrom(form, box, (body) => ({ channelId: c.channelId, body }));
    queueMicrotask(() => box.focus());
    return form;
  }

  /** A composer: Enter sends (Shift+Enter starts a new line; an input method's Enter composes), as
   * does the form's button. The box is cleared meanwhile; a refused send puts its text back, so
   * nothing typed is lost. */
  private sendsFrom(
    form: HTMLFormElement,
    box: HTMLTextAreaElement,
    message: (body: string) => { channelId: string; body: string; threadRootSeq?: bigint },
  ): void {
    const submit = (): void => {
      const body = box.value;
      if (!body.trim()) return;
      const request = { ...message(body), idempotencyKey: crypto.randomUUID() };
      box.value = "";
      withRefresh(() => gateway.sendMessage(request))
        .then((sent) => this.upsert(sent))
        .catch((err: unknown) => {
          box.value = body;
          this.notice(`Not sent: ${api.describe(err)}`);
        });
    };
    on(box, "keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submit();
      }
    });
    on(form, "submit", (event) => {
      event.preventDefault();
      submit();
    });
  }

  private title(c: Channel): string {
    if (!c.direct) return `# ${c.name}`;
    const others = c.memberIds.filter((u) => u !== this.session?.userId);
    return `@ ${others.map((u) => this.names.get(u) ?? u).join(", ") || (this.session?.username ?? "")}`;
  }

  private membersButton(view: ChannelView): HTMLElement {
    const list = h("ul", { class: "members", id: "members", hidden: !this.membersOpen });
    const button = h(
      "button",
      { type: "button", class: "link", "aria-expanded": String(this.membersOpen), "aria-controls": "members" },
      "Members",
    );
    const fill = (): void => {
      void this.nameOf(view.channel.memberIds.filter((u) => !this.names.has(u)).slice(0, 200)).then(() => {
        fillList(list, view.channel.memberIds, (id) => this.memberItem(id));
      });
    };
    on(button, "click", () => {
      this.membersOpen = list.hidden;
      list.hidden = !this.membersOpen;
      button.setAttribute("aria-expanded", String(this.membersOpen));
      if (this.membersOpen) fill();
    });
    if (this.membersOpen) fill();
    return h("div", { class: "members-box" }, button, list);
  }

  private memberItem(id: string): HTMLLIElement {
    const name = this.names.get(id) ?? id;
    if (id === this.session?.userId) return h("li", {}, name);
    const dm = h("button", { type: "button", class: "small" }, `Message ${name}`);
    on(dm, "click", () => this.enterChannel(() => gateway.createDirectChannel({ userIds: [id] })));
    return h("li", {}, name, " ", dm);
  }

  // -- threads --

  private openThread(view: ChannelView, rootSeq: bigint): void {
    this.thread = { channelId: view.channel.channelId, rootSeq };
    clear(this.threadEl); // another thread: no draft carried over
    this.renderThread();
    withRefresh(() => gateway.listThread({ channelId: view.channel.channelId, rootSeq }))
      .then((reply) => {
        for (const m of [reply.root, ...reply.replies]) if (m) view.messages.set(m.channelSeq, m);
        this.renderThread();
      })
      .catch((err: unknown) => this.notice(api.describe(err)));
  }

  private closeThread(): void {
    this.thread = null;
    this.renderThread();
  }

  private renderThread(): void {
    const t = this.thread;
    const view = t ? this.channels.get(t.channelId) : undefined;
    // Drawn again as the thread changes: a reply being written stays as it was.
    const writing = this.threadEl.querySelector<HTMLTextAreaElement>("#thread-composer");
    const draft = writing?.value ?? "";
    const focused = writing !== null && document.activeElement === writing;
    clear(this.threadEl);
    if (!t || !view) {
      this.threadEl.hidden = true;
      return;
    }
    this.threadEl.hidden = false;
    const close = h("button", { type: "button", class: "link" }, "Close thread");
    on(close, "click", () => this.closeThread());
    const root = view.messages.get(t.rootSeq);
    const replies = inOrder(view, (m) => m.threadRootSeq === t.rootSeq);
    const list = fillList(h("ol", { class: "message-list" }), replies, (m) => this.messageItem(view, m, true));
    const box = h("textarea", { id: "thread-composer", rows: 2 });
    box.value = draft;
    if (focused) queueMicrotask(() => box.focus());
    const form = h(
      "form",
      { class: "composer" },
      h("label", { for: "thread-composer", class: "visually-hidden" }, "Reply in thread"),
      box,
      h("button", { type: "submit" }, "Reply"),
    );
    this.sendsFrom(form, box, (body) => ({ channelId: t.channelId, body, threadRootSeq: t.rootSeq }));
    append(
      this.threadEl,
      h("div", { class: "thread-head" }, h("h2", {}, "Thread"), close),
      root ? h("ol", { class: "message-list root" }, this.messageItem(view, root, true)) : null,
      h("div", { class: "replies", role: "log", "aria-label": "Replies" }, list),
      view.channel.encrypted ? null : form,
    );
  }

  // -- history --

  private async loadLatest(view: ChannelView): Promise<void> {
    const last = view.channel.lastSeq;
    const page = await withRefresh(() =>
      gateway.getHistory({ channelId: view.channel.channelId, limit: PAGE, beforeSeq: last + 1n }),
    );
    for (const m of page.messages) view.messages.set(m.channelSeq, m);
    view.hasMore = page.hasMore;
    view.loaded = true;
    this.nameThePeople(view);
  }

  /** After a gap (reconnect): what came since the newest message held. */
  private async loadNewer(channelId: string): Promise<void> {
    const view = this.channels.get(channelId);
    if (!view?.loaded) return;
    const newest = [...view.messages.keys()].reduce((a, b) => (a > b ? a : b), 0n);
    const page = await withRefresh(() => gateway.getHistory({ channelId, afterSeq: newest, limit: 500 }));
    for (const m of page.messages) view.messages.set(m.channelSeq, m);
    if (channelId === this.current) this.renderMessages(view, "keep");
    this.nameThePeople(view);
  }

  private async loadOlder(view: ChannelView): Promise<void> {
    if (this.loadingOlder || !view.hasMore || view.messages.size === 0) return;
    this.loadingOlder = true;
    try {
      const oldest = [...view.messages.keys()].reduce((a, b) => (a < b ? a : b));
      const page = await withRefresh(() =>
        gateway.getHistory({ channelId: view.channel.channelId, limit: PAGE, beforeSeq: oldest }),
      );
      for (const m of page.messages) view.messages.set(m.channelSeq, m);
      view.hasMore = page.hasMore;
      if (view.channel.channelId === this.current) this.renderMessages(view, "older");
      this.nameThePeople(view);
    } finally {
      this.loadingOlder = false;
    }
  }

  // -- messages --

  private renderMessages(view: ChannelView, scroll: "bottom" | "keep" | "older"): void {
    const log = this.logEl;
    if (!log || view.channel.channelId !== this.current) return;
    const fromBottom = log.scrollHeight - log.scrollTop;
    const atBottom = fromBottom - log.clientHeight < 60;
    clear(log);
    if (view.messages.size === 0) {
      append(log, h("p", { class: "empty-log" }, "No messages yet. Say hello: type below and press Enter."));
    }
    const ordered = inOrder(view, (m) => m.threadRootSeq === 0n); // replies live in their thread
    const readBy = this.readersAt(view, ordered);
    const mark = view.readAtOpen;
    const firstNew = ordered.find((m) => mark !== undefined && m.channelSeq > mark && m.senderId !== this.session?.userId);
    const list = fillList(h("ol", { class: "message-list" }), ordered, (m) => {
      const item = this.messageItem(view, m);
      const readers = readBy.get(m.channelSeq);
      if (readers) append(item, h("p", { class: "read-by" }, `Read by ${readers.join(", ")}`));
      if (m !== firstNew) return item;
      const line = h("li", { class: "new-line", "aria-label": "New messages" }, "New messages");
      const both = document.createDocumentFragment();
      append(both, line, item);
      return both;
    });
    append(log, list);
    if (scroll === "bottom" || (scroll === "keep" && atBottom)) log.scrollTop = log.scrollHeight;
    else if (scroll === "older") log.scrollTop = log.scrollHeight - fromBottom;
  }

  /** Where each other member's read marker shows: under the newest message of the timeline they
   * have read (a marker on a thread reply shows at the timeline message before it). */
  private readersAt(view: ChannelView, timeline: ChatMessage[]): Map<bigint, string[]> {
    const at = new Map<bigint, string[]>();
    for (const [userId, seq] of view.readers) {
      let last: bigint | undefined;
      for (const m of timeline) if (m.channelSeq <= seq) last = m.channelSeq;
      if (last === undefined) continue;
      at.set(last, [...(at.get(last) ?? []), this.names.get(userId) ?? userId]);
    }
    return at;
  }

  /** Looks up the names of the people a channel's messages and markers mention that no message
   * names itself (a redacted message's sender, a reader), and draws the channel again with them. */
  private nameThePeople(view: ChannelView): void {
    const unnamed = new Set<string>();
    for (const m of view.messages.values()) {
      if (m.senderName) this.names.set(m.senderId, m.senderName);
      else if (m.senderId && !this.names.has(m.senderId)) unnamed.add(m.senderId);
    }
    for (const userId of view.readers.keys()) if (!this.names.has(userId)) unnamed.add(userId);
    if (unnamed.size === 0) return;
    void this.nameOf([...unnamed].slice(0, 200)).then((found) => {
      if (found.size === 0) return;
      if (view.channel.channelId === this.current) this.renderMessages(view, "keep");
      if (this.thread?.channelId === view.channel.channelId) this.renderThread();
    });
  }

  private messageItem(view: ChannelView, m: ChatMessage, inThread = false): HTMLLIElement {
    const mine = m.senderId === this.session?.userId;
    const sent = m.sentAt ? timestampDate(m.sentAt) : null;
    const name = m.senderName || this.names.get(m.senderId) || m.senderId;
    let body: HTMLElement;
    if (m.erased) body = h("p", { class: "body gone" }, "(removed: the author's data were erased)");
    else if (m.redacted) body = h("p", { class: "body gone" }, "(message deleted)");
    else if (view.channel.encrypted) body = h("p", { class: "body encrypted" }, "🔒 Encrypted message");
    else body = h("p", { class: "body" }, m.body);
    const edited = !m.redacted && (m.edited || m.editCount > 0) ? h("span", { class: "edited" }, " (edited)") : null;
    const li = h(
      "li",
      { class: mine ? "message mine" : "message", "data-seq": String(m.channelSeq) },
      h(
        "div",
        { class: "meta" },
        h("span", { class: "sender" }, name),
        sent
          ? h(
              "time",
              { datetime: sent.toISOString(), title: sent.toLocaleString() },
              sent.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
            )
          : null,
        edited,
      ),
      body,
    );
    if (m.redacted || m.erased) return li;
    const reactions = h("div", { class: "reactions" });
    for (const r of m.reactions) reactions.appendChild(this.reactionButton(view, m, r));
    const actions = h("div", { class: "actions" });
    if (!m.reactions.some((r) => r.emoji === REACTION)) {
      const react = h("button", { type: "button", class: "small", "aria-label": `React ${REACTION}` }, REACTION);
      on(react, "click", () => void this.react(view, m, REACTION, false));
      actions.appendChild(react);
    }
    if (!inThread && !view.channel.encrypted) {
      const replies = [...view.messages.values()].filter((x) => x.threadRootSeq === m.channelSeq).length;
      const count = Math.max(replies, m.replyCount);
      const reply = h("button", { type: "button", class: "small" }, count > 0 ? `${count} ${count === 1 ? "reply" : "replies"}` : "Reply");
      on(reply, "click", () => this.openThread(view, m.channelSeq));
      actions.appendChild(reply);
    }
    if (mine && !view.channel.encrypted) {
      const edit = h("button", { type: "button", class: "small" }, "Edit");
      on(edit, "click", () => this.edit(li, view, m));
      const del = h("button", { type: "button", class: "small" }, "Delete");
      on(del, "click", () => {
        if (window.confirm("Delete this message for everyone?")) {
          withRefresh(() => gateway.redactMessage({ channelId: m.channelId, channelSeq: m.channelSeq }))
            .then((updated) => this.upsert(updated))
            .catch((err: unknown) => this.notice(api.describe(err)));
        }
      });
      append(actions, edit, del);
    }
    append(li, reactions, actions);
    return li;
  }

  private reactionButton(view: ChannelView, m: ChatMessage, r: ReactionCount): HTMLButtonElement {
    const me = this.session?.userId ?? "";
    const pressed = r.userIds.includes(me);
    const b = h(
      "button",
      {
        type: "button",
        class: "reaction",
        "aria-pressed": pressed ? "true" : "false",
        "aria-label": `${r.emoji} ${r.userIds.length}`,
      },
      `${r.emoji} ${r.userIds.length}`,
    );
    on(b, "click", () => void this.react(view, m, r.emoji, pressed));
    return b;
  }

  private async react(view: ChannelView, m: ChatMessage, emoji: string, remove: boolean): Promise<void> {
    try {
      const updated = await withRefresh(() =>
        gateway.react({ channelId: m.channelId, channelSeq: m.channelSeq, emoji, remove }),
      );
      view.messages.set(updated.channelSeq, { ...m, reactions: updated.reactions });
      this.renderMessages(view, "keep");
    } catch (err) {
      this.notice(api.describe(err));
    }
  }

  private edit(li: HTMLLIElement, view: ChannelView, m: ChatMessage): void {
    const box = h("textarea", { "aria-label": "Edit message", rows: 2 });
    box.value = m.body;
    const save = h("button", { type: "submit" }, "Save");
    const cancel = h("button", { type: "button" }, "Cancel");
    const form = h("form", { class: "edit" }, box, save, cancel);
    on(cancel, "click", () => this.renderMessages(view, "keep"));
    on(form, "submit", (event) => {
      event.preventDefault();
      withRefresh(() => gateway.editMessage({ channelId: m.channelId, channelSeq: m.channelSeq, body: box.value }))
        .then((updated) => this.upsert(updated))
        .catch((err: unknown) => this.notice(api.describe(err)));
    });
    on(box, "keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        form.requestSubmit();
      } else if (event.key === "Escape") {
        this.renderMessages(view, "keep");
      }
    });
    li.replaceChildren(form);
    box.focus();
  }

  private upsert(m: ChatMessage): void {
    const view = this.channels.get(m.channelId);
    if (!view) return;
    view.messages.set(m.channelSeq, merged(view.messages.get(m.channelSeq), m));
    this.nameThePeople(view);
    if (m.channelSeq > view.channel.lastSeq) view.channel.lastSeq = m.channelSeq;
    if (m.channelId === this.current) {
      this.renderMessages(view, "keep");
      this.markRead(view);
    }
    if (this.thread?.channelId === m.channelId) this.renderThread();
  }

  private markRead(view: ChannelView): void {
    window.clearTimeout(this.markTimer);
    this.markTimer = window.setTimeout(() => {
      const seq = view.channel.lastSeq;
      if (seq > view.channel.readSeq && document.visibilityState === "visible") {
        view.channel.readSeq = seq;
        void withRefresh(() => gateway.markRead({ channelId: view.channel.channelId, channelSeq: seq })).catch(
          () => undefined,
        );
      }
    }, 300);
  }

  // -- live events --

  private onEvent(event: ClientEvent): void {
    const e = event.event;
    switch (e.case) {
      case "message": {
        const view = this.channels.get(e.value.channelId);
        if (!view) return;
        // Unread when newer than the channel as last listed (whose count has the older ones): a
        // message the stream replays after the list was read counts once.
        const isNew = e.value.channelSeq > view.channel.lastSeq;
        this.upsert(e.value);
        if (isNew && e.value.channelId !== this.current && e.value.senderId !== this.session?.userId) {
          view.channel.unreadCount += 1n;
          this.renderChannels();
        }
        return;
      }
      case "updated":
        this.upsert(e.value);
        return;
      case "reaction": {
        const view = this.channels.get(e.value.channelId);
        const m = view?.messages.get(e.value.channelSeq);
        if (!view || !m) return;
        const reactions = m.reactions.map((r) => ({ ...r, userIds: [...r.userIds] }));
        let r = reactions.find((x) => x.emoji === e.value.emoji);
        if (!r) {
          r = { $typeName: "parley.messaging.v1.ReactionCount", emoji: e.value.emoji, userIds: [] };
          reactions.push(r);
        }
        r.userIds = r.userIds.filter((u) => u !== e.value.userId);
        if (!e.value.removed) r.userIds.push(e.value.userId);
        view.messages.set(m.channelSeq, { ...m, reactions: reactions.filter((x) => x.userIds.length > 0) });
        if (view.channel.channelId === this.current) this.renderMessages(view, "keep");
        return;
      }
      case "readMarker": {
        const view = this.channels.get(e.value.channelId);
        if (!view) return;
        const { userId, channelSeq } = e.value;
        if (userId === this.session?.userId) {
          // Read on another device: nothing there is unread here either.
          if (channelSeq > view.channel.readSeq) view.channel.readSeq = channelSeq;
          if (channelSeq >= view.channel.lastSeq && view.channel.unreadCount > 0n) {
            view.channel.unreadCount = 0n;
            this.renderChannels();
          }
          return;
        }
        if (channelSeq <= (view.readers.get(userId) ?? 0n)) return;
        view.readers.set(userId, channelSeq);
        this.nameThePeople(view);
        if (view.channel.channelId === this.current) this.renderMessages(view, "keep");
        return;
      }
      case "membership":
        this.onMembership(e.value);
        return;
      default:
        return;
    }
  }

  private onMembership(change: MembershipChange): void {
    const me = this.session?.userId;
    const view = this.channels.get(change.channelId);
    const removal = ["left", "kicked", "banned"].includes(change.change);
    if (!view) {
      // About this user in a channel the stream does not follow: an invitation, or a channel they
      // came into elsewhere (the CLI, another tab, a conversation someone started with them).
      if (change.userId !== me) return;
      if (change.change === "invited") {
        void this.takeUpInvitation(change.channelId, change.actorId);
      } else if (change.change === "joined") {
        this.invitations.delete(change.channelId);
        void this.takeUp(change.channelId);
      }
      return;
    }
    if (change.userId === me && removal) {
      this.channels.delete(change.channelId);
      this.live?.forget(change.channelId);
      if (change.change !== "left") this.notice(`You were removed from ${this.title(view.channel)}.`);
      if (this.current === change.channelId) this.current = "";
      if (this.thread?.channelId === change.channelId) this.thread = null;
      this.renderThread();
      this.live?.restart(); // the stream ends for that channel: carry on with the others at once
      void this.loadChannels();
      return;
    }
    const c = view.channel;
    if (change.change === "renamed") c.name = change.detail;
    if (change.change === "topic") c.topic = change.detail;
    const members = new Set(c.memberIds);
    if (change.change === "joined") members.add(change.userId);
    if (removal) members.delete(change.userId);
    c.memberIds = [...members];
    this.renderChannels();
    if (c.channelId === this.current) this.renderHead(view);
  }

  // -- names and settings --

  private async nameOf(ids: string[]): Promise<Map<string, string>> {
    const found = new Map<string, string>();
    if (ids.length === 0) return found;
    const reply = await withRefresh(() => gateway.lookupUsers({ userIds: ids })).catch(() => null);
    for (const u of reply?.users ?? []) {
      found.set(u.userId, u.username);
      this.names.set(u.userId, u.username);
    }
    return found;
  }

  private openSettings(message = ""): void {
    if (!this.session) return;
    this.current = "";
    this.closeThread();
    this.renderChannels();
    renderSettings(this.mainEl, this.session, message);
  }
}

/** The messages held that `wanted` picks, oldest first. */
function inOrder(view: ChannelView, wanted: (m: ChatMessage) => boolean): ChatMessage[] {
  return [...view.messages.values()].filter(wanted).sort((a, b) => (a.channelSeq < b.channelSeq ? -1 : 1));
}

function byName(a: ChannelView, b: ChannelView): number {
  return a.channel.name.localeCompare(b.channel.name);
}

const root = document.getElementById("app");
if (root) void new App(root).boot();
