// The live stream of the user's channels (Gateway.Subscribe), kept alive: after a dropped
// connection, a laptop's sleep or a restart of the gateway it subscribes again and resumes every
// channel after the position of the last event it received, so nothing is missed or repeated.

import { Code, ConnectError } from "@connectrpc/connect";
import type { ClientEvent } from "./gen/parley/gateway/v1/gateway_pb.js";
import { gateway, refresh } from "./api.js";

export type ConnectionState = "connecting" | "live" | "offline" | "reconnecting";

export interface LiveHandlers {
  event(event: ClientEvent): void;
  state(state: ConnectionState, detail: string): void;
  /** A stream started again after a gap, or ended because a channel is no longer the user's:
   * the channel list is read again, as it may have changed meanwhile. */
  resumed(): Promise<void>;
}

const MAX_BACKOFF_MS = 15_000;

export class LiveStream {
  private readonly positions = new Map<string, bigint>();
  private abort: AbortController | null = null;
  private covering = ""; // the channels the stream was opened with, sorted and joined
  private stopped = false;
  private wake: (() => void) | null = null;
  private readonly onOnline = (): void => this.wake?.();
  // Offline (the network gone, a laptop closed): a stream that can no longer deliver is ended at
  // once rather than left hanging; back online it resumes from the last position held.
  private readonly onOffline = (): void => this.abort?.abort();

  constructor(
    private readonly handlers: LiveHandlers,
    /** The channels the user is in now: the stream covers these, resuming those it has seen. */
    private readonly channels: () => string[],
  ) {}

  start(): void {
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    void this.run();
  }

  stop(): void {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    this.abort?.abort();
  }

  /** A channel joined or created after the stream started, or one left: subscribe again to cover
   * the channels the user is in now. */
  restart(): void {
    this.abort?.abort();
  }

  /** After the channel list was read: subscribes again when it is no longer what the stream covers
   * (whoever read the list, the stream follows it). */
  sync(): void {
    if (this.abort !== null && this.listMoved()) this.restart();
  }

  /** The user's channels are no longer those the stream was opened with. */
  private listMoved(): boolean {
    return [...this.channels()].sort().join() !== this.covering;
  }

  /** A channel the user is no longer in: joined again later, it starts afresh, not from here. */
  forget(channelId: string): void {
    this.positions.delete(channelId);
  }

  private remember(event: ClientEvent): void {
    const e = event.event;
    switch (e.case) {
      case "ready":
        for (const p of e.value.positions) this.positions.set(p.channelId, p.afterPosition);
        break;
      case "message":
      case "updated":
        this.positions.set(e.value.channelId, e.value.position);
        break;
      case "reaction":
      case "readMarker":
      case "membership":
        this.positions.set(e.value.channelId, e.value.position);
        break;
      default:
        break;
    }
  }

  private async run(): Promise<void> {
    let failures = 0;
    let first = true;
    while (!this.stopped) {
      if (!navigator.onLine) {
        this.handlers.state("offline", "Offline: waiting for the network");
        await this.sleep(MAX_BACKOFF_MS);
        continue;
      }
      this.handlers.state(first ? "connecting" : "reconnecting", first ? "Connecting…" : "Reconnecting…");
      this.abort = new AbortController();
      const channelIds = this.channels();
      this.covering = [...channelIds].sort().join();
      const resume = channelIds
        .filter((c) => this.positions.has(c))
        .map((channelId) => ({ channelId, afterPosition: this.positions.get(channelId) ?? 0n }));
      try {
        for await (const event of gateway.subscribe({ channelIds, resume }, { signal: this.abort.signal })) {
          if (event.event.case === "ready") {
            this.handlers.state("live", "Live");
            if (!first) void this.handlers.resumed();
            first = false;
            failures = 0;
          }
          this.remember(event);
          this.handlers.event(event);
        }
      } catch (err) {
        if (this.stopped) return;
        const e = ConnectError.from(err);
        if (e.code === Code.Unauthenticated && (await refresh().catch(() => null)) === null) {
          this.handlers.state("offline", "Signed out: log in again");
          return;
        }
        if (this.abort?.signal.aborted && navigator.onLine) {
          continue; // restart(): at once, from where it was
        }
        // A channel it asked for is no longer the user's: at once, with the list as it is now.
        // Whoever read the list since the stream opened (this read, or one the removal's own event
        // began), what counts is that the list is not what the refused stream asked for.
        if (e.code === Code.PermissionDenied) {
          await this.handlers.resumed();
          if (this.listMoved()) continue;
        }
      }
      if (this.stopped) return;
      failures += 1;
      const wait = Math.min(MAX_BACKOFF_MS, 500 * 2 ** Math.min(failures, 5));
      if (navigator.onLine) {
        this.handlers.state("reconnecting", `Connection lost: reconnecting in ${Math.round(wait / 1000)} s`);
        await this.sleep(wait);
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }
}
