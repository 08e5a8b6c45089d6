// vibrawatch monitor page: the fleet table and a device's charts, refreshed on server-sent "change" events.
// Plain browser JavaScript, no build step; charts by uPlot (vendored, MIT).
"use strict";
const vw = (() => {
  const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  const num = (v, d = 3) => (v === null || v === undefined ? "-" : Number(v).toPrecision(d));
  const age = (s) => (s === null || s === undefined ? "-" : s < 120 ? `${Math.round(s)} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`);
  const getJSON = async (url) => { const r = await fetch(url, { cache: "no-store" }); if (!r.ok) throw new Error(`${url}: ${r.status}`); return r.json(); };

  // Re-run `refresh` whenever the server says the data changed (at most every 500 ms), and once at start.
  function live(refresh) {
    const badge = document.getElementById("live");
    let busy = false, again = false;
    const run = async () => {
      if (busy) { again = true; return; }
      busy = true;
      try { await refresh(); } catch (e) { badge.textContent = `error: ${e.message}`; }
      busy = false;
      if (again) { again = false; setTimeout(run, 500); }
    };
    const es = new EventSource("/api/events");
    es.addEventListener("change", run);
    es.onopen = () => { badge.textContent = "live"; };
    es.onerror = () => { badge.textContent = "reconnecting..."; };
    run();
    return run;
  }

  const when = (sec) => (sec ? new Date(sec * 1000).toISOString().replace("T", " ").slice(0, 19) : "");

  function measureRows(m) {
    const row = (per, name, g) => `<tr data-per="${esc(per)}" data-name="${esc(name)}"><td>${esc(per)}</td><td>${esc(name)}</td>` +
      `<td class="num">${g.episodes}</td><td class="num">${g.open}</td><td class="num confirmed">${g.confirmed_faults}</td>` +
      `<td class="num">${g.nuisance_alarms}</td><td class="num nuisance-rate">${num(g.nuisance_per_machine_month)}</td>` +
      `<td class="num">${g.maintenance}</td><td class="num">${num(g.warning_to_repair_h && g.warning_to_repair_h.median)}</td>` +
      `<td class="num">${num(g.machine_months)}</td></tr>`;
    return [row("fleet", "", m.fleet),
      ...Object.entries(m.sites).map(([k, g]) => row("site", k, g)),
      ...Object.entries(m.models).map(([k, g]) => row("model", k, g))].join("");
  }

  function fleetPage() {
    const body = document.querySelector("#fleet tbody");
    live(async () => {
      document.querySelector("#measures tbody").innerHTML = measureRows(await getJSON("/api/measures"));
      const data = await getJSON("/api/fleet");
      body.innerHTML = data.devices.map((d) => {
        const key = `${d.site}/${d.device}`;
        const href = `/device?site=${encodeURIComponent(d.site)}&device=${encodeURIComponent(d.device)}`;
        return `<tr class="${esc(d.health)}" data-device="${esc(key)}" data-health="${esc(d.health)}" ` +
          `data-threshold-source="${esc(d.threshold_source || "")}">` +
          `<td><a href="${href}">${esc(key)}</a></td><td><span class="health">${esc(d.health)}</span></td>` +
          `<td class="num">${num(d.level)}</td><td class="num">${num(d.last_score)}</td><td class="num">${num(d.threshold)}</td>` +
          `<td class="source">${esc(d.threshold_source || "")}</td>` +
          `<td>${esc(d.alarm_since || "")}</td><td>${esc(d.alarm_channel || "")}</td><td>${esc(age(d.age_s))}</td>` +
          `<td class="num">${d.lost || 0}</td><td class="model" title="sha256 ${esc(d.model_sha256 || "?")}">${esc(d.model || "")}</td><td>${esc(d.agent || "")}</td><td>${esc(d.note)}</td></tr>`;
      }).join("");
      document.title = `vibrawatch fleet (${data.devices.filter((d) => d.health === "alarm").length} alarm)`;
    });
  }

  // Alarm periods [start, end] in the data's own time t, from raised/cleared events in seq order.
  function alarmPeriods(alarms, lastT) {
    const out = [];
    let start = null;
    for (const a of alarms) {
      if (a.event === "raised" && start === null) start = a.t;
      if (a.event === "cleared" && start !== null) { out.push([start, a.t]); start = null; }
    }
    if (start !== null) out.push([start, lastT ?? start]);
    return out;
  }

  // Runs of consecutive scores whose thresholds were still being learned: [first t, last t].
  function commissioningPeriods(t, sources) {
    const out = [];
    let start = null;
    for (let i = 0; i < t.length; i++) {
      if (sources[i] === "commissioning" && start === null) start = t[i];
      if (sources[i] !== "commissioning" && start !== null) { out.push([start, t[i - 1]]); start = null; }
    }
    if (start !== null) out.push([start, t[t.length - 1]]);
    return out;
  }

  function shade(periods, colour = "rgba(217, 48, 37, 0.15)") {
    return (u) => {
      const ctx = u.ctx;
      ctx.save();
      ctx.fillStyle = colour;
      for (const [a, b] of periods) {
        const x0 = u.valToPos(a, "x", true), x1 = u.valToPos(b, "x", true);
        ctx.fillRect(x0, u.bbox.top, Math.max(x1 - x0, 2), u.bbox.height);
      }
      ctx.restore();
    };
  }

  const learning = "rgba(26, 115, 232, 0.12)";

  const palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"];

  // The operator: logged in by a session cookie (HttpOnly); every action carries the session's CSRF token.
  let csrf = null, signs = false;
  async function post(path, body) {
    const headers = { "Content-Type": "application/json" };
    if (csrf) headers["X-CSRF-Token"] = csrf;
    const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body), credentials: "same-origin" });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(`${r.status}: ${j.error || r.statusText}`);
    return j;
  }

  function operatorPanel(refresh) {
    const who = document.getElementById("who"), login = document.getElementById("login");
    const logout = document.getElementById("logout"), err = document.getElementById("action-error");
    const show = (w) => {
      csrf = w.csrf;
      signs = !!w.signs_recalibration;
      document.body.dataset.signs = signs ? "yes" : "no";
      document.getElementById("recal-how").textContent = signs
        ? "(the monitor sends the gateway the signed request)"
        : "(this monitor holds no signing key: it shows the command to run where the key is)";
      document.body.dataset.operator = w.operator || "";
      who.textContent = w.operator ? `operator ${w.operator}` : (w.operators_configured ? "" : "no operators configured: nobody may act");
      login.hidden = !!w.operator || !w.operators_configured;
      logout.hidden = !w.operator;
    };
    const info = document.getElementById("action-info");
    const act = async (fn) => {
      err.textContent = "";
      info.textContent = "";
      try { await fn(); } catch (e) { err.textContent = e.message; }
      refresh();
    };
    login.addEventListener("submit", (ev) => {
      ev.preventDefault();
      act(async () => show(await post("/api/login", { name: document.getElementById("login-name").value,
        password: document.getElementById("login-password").value })));
      document.getElementById("login-password").value = "";
    });
    logout.addEventListener("click", () => act(async () => { await post("/api/logout", {}); show({ operators_configured: true }); }));
    const form = document.getElementById("close-form");
    document.querySelector("#episodes").addEventListener("click", (ev) => {
      const b = ev.target.closest("button[data-action]");
      if (!b) return;
      const id = b.closest("tr").dataset.episode, what = b.dataset.action;
      if (what === "close") {
        document.getElementById("close-id").textContent = id;
        document.getElementById("close-recalibrate").checked = document.getElementById("close-verdict").value === "fault_confirmed";
        form.hidden = false;
        return;
      }
      const note = what === "ack" ? (document.getElementById("ack-note")?.value || "") : "";
      act(async () => {
        const r = await post(`/api/episodes/${what}`, what === "shelve" ? { id, hours: 8 } : { id, note });
        if (r.recalibration) info.textContent = recalText(r.recalibration);
      });
    });
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = (n) => document.getElementById(n).value;
      act(async () => {
        const r = await post("/api/episodes/close", { id: document.getElementById("close-id").textContent,
          verdict: v("close-verdict"), part: v("close-part"), work: v("close-work"), note: v("close-note"),
          recalibrate: document.getElementById("close-recalibrate").checked });
        form.hidden = true;
        if (r.recalibration) info.textContent = `closed; ${recalText(r.recalibration)}`;
      });
    });
    // A repair means a new healthy state: recalibrating is the default after a confirmed fault.
    document.getElementById("close-verdict").addEventListener("change", (ev) => {
      document.getElementById("close-recalibrate").checked = ev.target.value === "fault_confirmed";
    });
    document.getElementById("close-cancel").addEventListener("click", () => { form.hidden = true; });
    getJSON("/api/whoami").then(show).catch(() => {});
  }

  // What the monitor did about recalibrating, in words (the answer of a close or of /api/episodes/recalibrate).
  function recalText(r) {
    if (r.outcome === "not_sent") return `${r.reason}; to recalibrate the gateway run: ${r.command}`;
    if (r.outcome === "sent") return `recalibration request ${r.id} sent to ${r.site}/${r.device}; its status will say when it is commissioning`;
    return `recalibration ${r.outcome}${r.id ? ` (request ${r.id})` : ""}: ${r.reason}`;
  }

  // Each episode's newest recalibration request (from its history) and the device's answer (from its statuses).
  function recalibrations(history, statuses, deviceState) {
    const out = {};
    for (const h of history) {  // newest first
      if (h.action !== "recalibrate" || out[h.target]) continue;
      const d = JSON.parse(h.detail || "{}");
      const answer = statuses.map((st) => { try { return JSON.parse(st.payload).command; } catch (e) { return null; } })
        .find((c) => c && d.id && c.id === d.id);
      const state = answer ? answer.outcome : d.outcome;
      out[h.target] = { state, text: `${d.outcome}${d.id ? ` #${d.id}` : ""}` +
        (answer ? `: ${answer.outcome}${answer.outcome === "applied" ? `; device ${deviceState}` : ` (${answer.reason || ""})`}` :
          d.reason ? ` (${d.reason})` : "") };
    }
    return out;
  }

  function episodeRows(eps, recal = {}) {
    const buttons = (e) => [
      ["active", "shelved"].includes(e.state) ? `<button data-action="ack">Acknowledge</button>` : "",
      ["active", "acknowledged"].includes(e.state) ? `<button data-action="shelve">Shelve 8 h</button>` : "",
      e.state !== "closed" ? `<button data-action="close">Close&hellip;</button>` : "",
      e.state === "closed" && signs ? `<button data-action="recalibrate">Recalibrate</button>` : ""].join(" ");
    return eps.map((e) => `<tr class="ep-${esc(e.state)}" data-episode="${esc(e.id)}" data-state="${esc(e.state)}">` +
      `<td>${esc(e.id)}</td><td>${esc(e.raised_ts)}</td><td>${esc(e.channel)}</td><td class="state">${esc(e.state)}` +
      `${e.state === "shelved" ? ` until ${esc(when(e.shelved_until))}` : ""}</td>` +
      `<td class="diagnosis" title="the defect frequency the gateway found standing out, if any">` +
      `${esc(e.diagnosis_text || "none stands out")}</td>` +
      `<td>${e.ack_by ? `${esc(e.ack_by)} ${esc(when(e.ack_at))}${e.ack_note ? `: ${esc(e.ack_note)}` : ""}` : ""}</td>` +
      `<td class="verdict">${esc(e.verdict || "")}${e.part ? `: ${esc(e.part)} (${esc(e.work || "")})` : ""}</td>` +
      `<td class="recalibration" data-recalibration="${esc(recal[e.id]?.state || "")}">${esc(recal[e.id]?.text || "")}</td>` +
      `<td>${buttons(e)}</td></tr>`).join("");
  }

  function devicePage() {
    const q = new URLSearchParams(location.search);
    const site = q.get("site"), device = q.get("device");
    document.getElementById("title").textContent = `${site}/${device}`;
    const charts = {};
    const width = () => Math.min(window.innerWidth - 80, 1100);

    function draw(id, opts, data) {
      const el = document.getElementById(id);
      if (charts[id]) charts[id].destroy();
      el.innerHTML = "";
      charts[id] = new uPlot({ width: width(), height: 260, ...opts }, data, el);
    }

    let refresh = () => {};
    operatorPanel(() => refresh());
    refresh = live(async () => {
      const d = await getJSON(`/api/device?site=${encodeURIComponent(site)}&device=${encodeURIComponent(device)}`);
      const row = d.device, s = d.scores;
      document.getElementById("summary").innerHTML =
        `<span class="${esc(row.health)}"><span class="health">${esc(row.health)}</span></span> ` +
        `model ${esc(row.model || "?")} <span id="sha256">(sha256 ${esc((row.model_sha256 || "?").slice(0, 12))})</span>, ` +
        `agent ${esc(row.agent || "?")}, ${row.received} messages, ${row.lost || 0} lost` +
        (row.deploy_note ? `; <span id="deploy">last ${esc(row.deploy_note)}</span>` : "");
      document.querySelector("#device tbody").innerHTML =
        `<tr class="${esc(row.health)}" data-device="${esc(site + "/" + device)}" data-health="${esc(row.health)}">` +
        `<td><span class="health">${esc(row.health)}</span></td><td>level ${num(row.level)}</td>` +
        `<td>alarm since ${esc(row.alarm_since || "-")}</td>` +
        `<td id="device-state" data-state="${esc(row.state || "")}">status ${esc(row.state || "?")}</td>` +
        `<td id="thresholds" data-source="${esc(row.threshold_source || "")}">thresholds from ${esc(row.threshold_source || "?")}</td>` +
        `<td>${esc(row.note)}</td></tr>`;

      const periods = alarmPeriods(d.alarms, s.t.length ? s.t[s.t.length - 1] : null);
      const learned = commissioningPeriods(s.t, s.threshold_source);
      const chartEl = document.getElementById("score-chart");
      draw("score-chart", {
        series: [{}, { label: "score", stroke: "#1f5fbf", width: 1.5 },
          { label: "threshold (each score's own)", stroke: "#d93025", dash: [6, 4] }],
        hooks: { drawClear: [shade(learned, learning), shade(periods)] },
        axes: [{}, { label: "score (MAE)" }],
      }, [s.t, s.score, s.threshold]);
      chartEl.dataset.points = String(s.t.length);
      chartEl.dataset.alarms = String(periods.length);
      chartEl.dataset.commissioning = String(learned.length);
      chartEl.dataset.lastThreshold = s.threshold.length ? String(s.threshold[s.threshold.length - 1]) : "";

      const chans = Object.keys(s.contributions);
      draw("contrib-chart", {
        series: [{}, ...chans.map((c, i) => ({ label: c, stroke: palette[i % palette.length] }))],
        hooks: { drawClear: [shade(learned, learning), shade(periods)] },
      }, [s.t, ...chans.map((c) => s.contributions[c])]);

      const h = d.hourly;
      document.getElementById("hourly-title").style.display = h.length ? "" : "none";
      document.getElementById("hourly-chart").style.display = h.length ? "" : "none";
      if (h.length) {
        draw("hourly-chart", {
          series: [{}, { label: "min", stroke: "#8ab4f8" }, { label: "mean", stroke: "#1f5fbf" }, { label: "max", stroke: "#174ea6" },
            { label: "threshold", stroke: "#d93025", dash: [6, 4] }],
        }, [h.map((r) => r.hour), h.map((r) => r.min), h.map((r) => r.mean), h.map((r) => r.max), h.map((r) => r.threshold)]);
      }

      document.querySelector("#episodes tbody").innerHTML = episodeRows(d.episodes,
        recalibrations(d.history, d.statuses, row.state || "?"));
      document.querySelector("#history tbody").innerHTML = d.history.map((h) =>
        `<tr data-action="${esc(h.action)}"><td>${esc(when(h.at))}</td><td>${esc(h.target)}</td><td>${esc(h.action)}</td>` +
        `<td>${esc(h.actor)}</td><td>${esc(h.source)}</td><td>${esc(h.detail)}</td></tr>`).join("");
      document.querySelector("#alarms tbody").innerHTML = d.alarms.slice().reverse().map((a) =>
        `<tr><td class="num">${a.seq}</td><td>${esc(a.ts)}</td><td>${esc(a.event)}</td><td>${esc(a.channel || "")}</td>` +
        `<td class="num">${num(a.level)}</td></tr>`).join("");
      document.querySelector("#statuses tbody").innerHTML = d.statuses.map((st) => {
        const p = JSON.parse(st.payload);
        const details = p.fault || p.reason || p.event || [p.agent && `agent ${p.agent}`, p.runtime].filter(Boolean).join(", ");
        return `<tr><td>${esc(st.ts)}</td><td>${esc(st.state)}</td><td>${esc(details)}</td></tr>`;
      }).join("");
      document.querySelector("#gaps tbody").innerHTML = d.gaps.map((g) =>
        `<tr><td class="num">${g.first_seq}</td><td class="num">${g.last_seq}</td>` +
        `<td class="num">${g.last_seq - g.first_seq + 1 - g.filled}</td></tr>`).join("");
    });
  }

  return { fleetPage, devicePage };
})();
