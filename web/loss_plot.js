// Prune & Distill: draw the live loss curve on the node that is training.
// The server sends "flash_vaed.distill" websocket events (format: web/README.md, built by
// flash_vaed/distill_messages.py). The plot lives in a widget of the node the message names; it is not saved.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "flash_vaed.distill";
const WIDGET_NAME = "flash_vaed_loss_plot";
const HEIGHT_PX = 200;
const MAX_POINTS = 2000; // beyond this every other point is dropped, so a long run stays cheap to draw
const COLORS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#90a4ae"];

export function emptyPlot() {
    return { steps: [], losses: {}, phaseStarts: [], step: 0, total: 0, phase: 0, lr: null, done: false, out: null };
}

// Adds one message to the plot data; a step that goes back (a new run) starts a fresh plot.
export function addMessage(plot, msg) {
    if (msg.done) {
        return Object.assign(plot, { done: true, out: msg.out ?? null });
    }
    const previous = plot.steps[plot.steps.length - 1];
    if (plot.done || msg.step < previous) Object.assign(plot, emptyPlot());
    if (msg.step === plot.steps[plot.steps.length - 1]) return plot; // a repeated step (resume) adds nothing
    const n = plot.steps.length;
    plot.steps.push(msg.step);
    for (const name of Object.keys(msg.losses ?? {})) {
        plot.losses[name] ??= new Array(n).fill(null);
    }
    for (const [name, values] of Object.entries(plot.losses)) {
        const v = msg.losses?.[name];
        values.push(Number.isFinite(v) ? v : null);
    }
    if (msg.phase !== plot.phase) plot.phaseStarts.push({ step: msg.step, phase: msg.phase });
    Object.assign(plot, { step: msg.step, total: msg.total, phase: msg.phase, lr: msg.lr });
    if (plot.steps.length > MAX_POINTS) {
        const keep = (_, i, all) => i % 2 === 0 || i === all.length - 1;
        plot.steps = plot.steps.filter(keep);
        for (const name of Object.keys(plot.losses)) plot.losses[name] = plot.losses[name].filter(keep);
    }
    return plot;
}

export function summary(plot) {
    if (!plot.steps.length) return plot.done ? `done${plot.out ? `: ${plot.out}` : ""}` : "waiting for the first step";
    const lr = Number.isFinite(plot.lr) ? ` · lr ${plot.lr.toExponential(1)}` : "";
    const head = `phase ${plot.phase}/3 · step ${plot.step}/${plot.total}${lr}`;
    return plot.done ? `${head} · done${plot.out ? `: ${plot.out}` : ""}` : head;
}

function draw(canvas, plot) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, canvas.clientWidth);
    const h = Math.max(1, canvas.clientHeight);
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
        canvas.width = Math.round(w * dpr);
        canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.fillStyle = "rgba(0,0,0,0.25)";
    ctx.fillRect(0, 0, w, h);
    ctx.font = "11px monospace";
    ctx.textBaseline = "top";
    ctx.fillStyle = "#ccc";
    ctx.fillText(summary(plot), 6, 4);

    const names = Object.keys(plot.losses);
    const values = names.flatMap((k) => plot.losses[k]).filter((v) => v !== null);
    if (!values.length) return;
    const log = values.every((v) => v > 0);
    const f = log ? Math.log10 : (v) => v;
    let lo = Math.min(...values.map(f));
    let hi = Math.max(...values.map(f));
    if (hi - lo < 1e-9) [lo, hi] = [lo - 0.5, hi + 0.5];
    const box = { x: 44, y: 20, w: w - 52, h: h - 20 - 16 - 14 * Math.ceil(names.length / 3) };
    const x0 = plot.steps[0];
    const x1 = Math.max(plot.total, plot.steps[plot.steps.length - 1], x0 + 1);
    const px = (s) => box.x + ((s - x0) / (x1 - x0)) * box.w;
    const py = (v) => box.y + (1 - (f(v) - lo) / (hi - lo)) * box.h;

    ctx.strokeStyle = "#555";
    ctx.strokeRect(box.x, box.y, box.w, box.h);
    ctx.fillStyle = "#999";
    const label = (v) => (log ? 10 ** v : v).toPrecision(2);
    ctx.fillText(label(hi), 2, box.y);
    ctx.fillText(label(lo), 2, box.y + box.h - 11);
    ctx.fillText(String(x1), box.x + box.w - 6 * String(x1).length, box.y + box.h + 2);
    for (const { step, phase } of plot.phaseStarts) {
        ctx.strokeStyle = "#777";
        ctx.setLineDash([3, 3]);
        ctx.beginPath();
        ctx.moveTo(px(step), box.y);
        ctx.lineTo(px(step), box.y + box.h);
        ctx.stroke();
        ctx.setLineDash([]);
        ctx.fillText(`P${phase}`, px(step) + 2, box.y + 2);
    }
    names.forEach((name, i) => {
        const color = COLORS[i % COLORS.length];
        ctx.strokeStyle = color;
        ctx.lineWidth = 1.5;
        ctx.beginPath();
        let pen = false;
        plot.losses[name].forEach((v, j) => {
            if (v === null) return void (pen = false);
            const [x, y] = [px(plot.steps[j]), py(v)];
            pen ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
            pen = true;
        });
        ctx.stroke();
        const lastValue = plot.losses[name].findLast((v) => v !== null);
        const lx = box.x + (i % 3) * (box.w / 3);
        const ly = box.y + box.h + 16 + 14 * Math.floor(i / 3);
        ctx.fillStyle = color;
        ctx.fillText(`${name} ${lastValue === undefined ? "-" : lastValue.toPrecision(3)}`, lx, ly);
    });
}

function plotWidget(node) {
    const found = node.widgets?.find((w) => w.name === WIDGET_NAME);
    if (found) return found;
    const canvas = document.createElement("canvas");
    Object.assign(canvas.style, { width: "100%", height: `${HEIGHT_PX}px`, display: "block", pointerEvents: "none" });
    // The options below only read `plot` and `canvas`, never the widget: frontend 1.58 reads the value from
    // inside addDOMWidget (registering the widget in its store), before `widget` below is initialised.
    // `plot` is changed in place by addMessage, so the widget's `plot` and these closures stay one object.
    const plot = emptyPlot();
    const widget = node.addDOMWidget(WIDGET_NAME, "flash_vaed_loss_plot", canvas, {
        serialize: false,
        hideOnZoom: false,
        getValue: () => summary(plot),
        setValue: () => {},
        getMinHeight: () => HEIGHT_PX + 4,
        getMaxHeight: () => HEIGHT_PX + 4,
        // redraw when the node is resized (canvas size changes), not on every frame
        onDraw: () => {
            if (canvas.width !== Math.round(canvas.clientWidth * (window.devicePixelRatio || 1))) draw(canvas, plot);
        },
    });
    widget.serialize = false;
    widget.plot = plot;
    widget.redraw = () => draw(canvas, plot);
    const [w, h] = node.computeSize();
    node.setSize([Math.max(node.size[0], w, 320), Math.max(node.size[1], h)]);
    return widget;
}

// "12" or, inside subgraphs, "7:12" (the execution id ComfyUI gives the node).
function nodeByExecutionId(graph, id) {
    let node = null;
    for (const part of String(id).split(":")) {
        node = graph?.getNodeById(part);
        if (!node) return null;
        graph = node.subgraph;
    }
    return node;
}

app.registerExtension({
    name: "FlashVAED.loss_plot",
    setup() {
        api.addEventListener(EVENT, ({ detail }) => {
            if (!detail || detail.node === undefined) return;
            const node = nodeByExecutionId(app.graph, detail.node);
            if (!node) return;
            // A failure here must not escape into the frontend's event dispatch; say whose it is.
            try {
                const widget = plotWidget(node);
                addMessage(widget.plot, detail);
                widget.redraw();
                node.setDirtyCanvas(true, true);
            } catch (error) {
                console.error("FlashVAED.loss_plot: cannot show the message", detail, error);
            }
        });
    },
});
