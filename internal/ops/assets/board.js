// Meridian station board: polls api/board every second and redraws. Plain
// DOM, no framework; every value goes in through textContent, never as HTML.
"use strict";
(function () {
  const POLL_MS = 1000, TIMEOUT_MS = 3000;
  const $ = (id) => document.getElementById(id);

  const GATEWAY = {
    starting: ["◔", "starting"], ready: ["✔", "ready"], draining: ["⏏", "draining"],
    lame_duck: ["⏏", "lame duck"], failed: ["✖", "failed: the sink cannot store"], unreachable: ["✖", "unreachable"],
  };
  const STREAM = {
    taking: ["✔", "taking frames"], backpressure: ["⚠", "back-pressured"],
    outage: ["✖", "OUTAGE"], none: ["–", "no durable stream"], starting: ["◔", "opening"],
    unreachable: ["?", "unknown"],
  };
  const STATION = {
    connected: ["●", "connected"], quiet: ["⚠", "quiet"], disconnected: ["○", "disconnected"],
  };

  function fmtInt(n) { return Number(n).toLocaleString("en-US"); }
  function fmtBytes(n) {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + " " + u[i];
  }
  function fmtRate(r) { return r >= 100 ? fmtInt(Math.round(r)) : r.toFixed(r >= 10 ? 1 : 2); }
  function fmtAge(s) {
    if (!isFinite(s) || s < 0) s = 0;
    if (s < 10) return s.toFixed(1) + " s";
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + r + "s";
    return r + " s";
  }
  function fmtClock(t) { return t ? t.toISOString().slice(11, 19) + "Z" : ""; }
  function ago(now, iso) { return iso ? (now - Date.parse(iso)) / 1000 : NaN; }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function sparkline(points) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 100 20");
    svg.setAttribute("preserveAspectRatio", "none");
    const base = document.createElementNS(ns, "line");
    base.setAttribute("class", "base");
    base.setAttribute("x1", "0"); base.setAttribute("x2", "100");
    base.setAttribute("y1", "19.5"); base.setAttribute("y2", "19.5");
    svg.appendChild(base);
    const pts = points || [];
    if (pts.length > 0) {
      const top = Math.max(1, ...pts);
      const step = pts.length > 1 ? 100 / (pts.length - 1) : 0;
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", pts.map((v, i) =>
        (i * step).toFixed(2) + "," + (19 - 18 * v / top).toFixed(2)).join(" "));
      svg.appendChild(line);
    }
    const title = document.createElementNS(ns, "title");
    title.textContent = pts.length ? "peak " + fmtRate(Math.max(...pts)) + " frames/s" : "no history yet";
    svg.appendChild(title);
    return svg;
  }

  function cell(row, field, cls, text) {
    const td = el("td", cls, text);
    td.dataset.field = field;
    row.appendChild(td);
    return td;
  }

  // pair is a cell with two values, each in its own span with its field name.
  function pair(row, cls, ...parts) {
    const td = el("td", cls);
    for (const [field, c, text] of parts) {
      const span = el("span", c, text);
      span.dataset.field = field;
      td.appendChild(span);
    }
    row.appendChild(td);
    return td;
  }

  function stationRow(s, now) {
    const tr = el("tr");
    tr.dataset.id = s.id;
    tr.dataset.station = s.station;
    tr.dataset.state = s.state;
    if (s.ack_lag > 0 && s.state !== "disconnected") tr.classList.add("lag");
    const [icon, label] = STATION[s.state] || ["?", s.state];
    const st = cell(tr, "state", "");
    const badge = el("span", "state");
    badge.appendChild(el("span", "", icon)).setAttribute("aria-hidden", "true");
    badge.appendChild(el("span", "", label));
    st.appendChild(badge);
    if (s.state === "quiet") st.title = "no frame for " + fmtAge(s.last_frame_age_seconds) + "; expected within " + fmtAge(s.quiet_after_seconds);
    if (s.state === "disconnected") {
      st.title = "ended at " + fmtClock(new Date(s.disconnected_at)) + (s.close_reason ? ": " + s.close_reason : "");
      if (s.close_reason) st.appendChild(el("span", "sub", s.close_reason.replace(/_/g, " ")));
    }

    const name = cell(tr, "station", "station");
    name.appendChild(el("span", "name", s.station));
    const link = el("span", "sub");
    link.dataset.field = "link";
    link.textContent = "link " + s.link + " · framing " + s.framing;
    name.appendChild(link);
    const remote = cell(tr, "remote", "mono", s.remote_addr);
    const sub = el("span", "sub", s.id.split("@")[0]);
    sub.title = s.id;
    if (s.tls_identity) {
      // With mTLS the identity is usually the station name already shown:
      // then the tag alone says it came from the certificate.
      sub.appendChild(document.createTextNode(" · "));
      const tag = sub.appendChild(el("span", "tag", "mTLS"));
      tag.dataset.field = "tls";
      tag.title = "TLS identity: " + s.tls_identity;
      if (s.tls_identity !== s.station) sub.appendChild(document.createTextNode(" " + s.tls_identity));
    }
    remote.appendChild(sub);
    const since = s.state === "disconnected"
      ? cell(tr, "since", "", "ended " + fmtAge(ago(now, s.disconnected_at)) + " ago")
      : cell(tr, "since", "", "for " + fmtAge(ago(now, s.connected_since)));
    since.title = "connected at " + s.connected_since;
    pair(tr, "num", ["frames", "", fmtInt(s.frames)], ["bytes", "sub", fmtBytes(s.bytes)]);
    cell(tr, "fps", "num", s.state === "disconnected" ? "–" : fmtRate(s.frames_per_second));
    cell(tr, "spark", "").appendChild(sparkline(s.rate_history));
    pair(tr, "num", ["acked", "", fmtInt(s.frames_acked)], ["lag", "sub lag", "lag " + fmtInt(s.ack_lag)]);
    const age = cell(tr, "age", "num age", s.last_frame_at || s.state === "disconnected" ? fmtAge(s.last_frame_age_seconds) : "none yet");
    if (s.last_frame_at) age.title = s.last_frame_at;
    cell(tr, "rtt", "num", s.heartbeat_rtt_ms ? s.heartbeat_rtt_ms.toFixed(1) + " ms" : "–");
    const q = s.link_quality ? Object.keys(s.link_quality).sort().map((k) => k + " " + fmtInt(s.link_quality[k])).join(" · ") : "–";
    cell(tr, "quality", "quality", q);
    return tr;
  }

  function setBadge(id, map, state, valueId) {
    const b = $(id);
    b.dataset.state = state;
    const [icon, label] = map[state] || ["?", state];
    b.querySelector(".icon").textContent = icon;
    $(valueId).textContent = label;
  }

  function render(v) {
    const now = Date.parse(v.now);
    setBadge("gateway", GATEWAY, v.gateway.state, "gateway-state");
    $("gateway").title = v.gateway.detail || "";
    setBadge("stream", STREAM, v.stream.state, "stream-state");
    $("stream-since").textContent = v.stream.since && v.stream.state !== "none"
      ? "since " + fmtClock(new Date(v.stream.since)) + " (" + fmtAge(ago(now, v.stream.since)) + ")" : "";
    const det = $("stream-detail");
    det.hidden = !(v.stream.detail && v.stream.state === "outage");
    det.textContent = det.hidden ? "" : "Stream: " + v.stream.detail + " · outages so far: " + fmtInt(v.stream.outages);

    const q = v.queue, pct = q.capacity_frames > 0 ? 100 * q.depth_frames / q.capacity_frames : 0;
    $("queue").dataset.state = pct >= 100 ? "full" : pct >= 75 ? "high" : "ok";
    $("queue-fill").textContent = fmtInt(q.depth_frames) + " / " + fmtInt(q.capacity_frames) + (pct >= 100 ? " FULL" : "");
    $("queue-bar").style.width = Math.min(100, pct).toFixed(1) + "%";

    const t = v.totals;
    $("t-connected").textContent = fmtInt(t.connected);
    $("t-quiet").textContent = fmtInt(t.quiet);
    $("t-disconnected").textContent = fmtInt(t.disconnected);
    $("t-fps").textContent = fmtRate(t.frames_per_second);
    $("t-frames").textContent = fmtInt(t.frames);
    $("t-bytes").textContent = fmtBytes(t.bytes);
    $("t-acked").textContent = fmtInt(t.frames_acked);
    $("t-lag").textContent = fmtInt(t.ack_lag);

    // The optional columns show only when some session reports them.
    $("stations").dataset.rtt = v.stations.some((s) => s.heartbeat_rtt_ms) ? "1" : "0";
    $("stations").dataset.quality = v.stations.some((s) => s.link_quality) ? "1" : "0";
    const rows = document.createDocumentFragment();
    for (const s of v.stations) rows.appendChild(stationRow(s, now));
    $("rows").replaceChildren(rows);
    $("empty").hidden = v.stations.length > 0;
    $("updated").textContent = "updated " + fmtClock(new Date(now));
  }

  let lastOK = 0;
  function unreachable(why) {
    const c = $("conn");
    c.hidden = false;
    c.textContent = "✖ Cannot reach the gateway (" + why + ")" +
      (lastOK ? "; figures below are from " + fmtClock(new Date(lastOK)) + ", " + fmtAge((Date.now() - lastOK) / 1000) + " ago" : "");
    setBadge("gateway", GATEWAY, "unreachable", "gateway-state");
    setBadge("stream", STREAM, "unreachable", "stream-state");
  }

  async function poll() {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      const r = await fetch("api/board", { cache: "no-store", signal: ctl.signal });
      if (!r.ok) throw new Error("HTTP " + r.status);
      render(await r.json());
      lastOK = Date.now();
      $("conn").hidden = true;
    } catch (e) {
      unreachable(e.name === "AbortError" ? "timed out" : e.message);
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
  }
  poll();
})();
