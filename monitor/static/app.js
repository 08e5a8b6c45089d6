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
  }

  function fleetPage() {
    const body = document.querySelector("#fleet tbody");
    live(async () => {
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

    live(async () => {
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
