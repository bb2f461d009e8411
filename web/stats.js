// Flash-VAED Decode: show the last decode's statistics (frames, time, fps, peak memory) on the node.
// The node returns them in its UI output: {flash_vaed_stats: [{frames, seconds, fps, peak_mem_mb, ...}]}.
import { app } from "../../scripts/app.js";

const NODE_TYPE = "FlashVAEDDecode";
const STATS_KEY = "flash_vaed_stats";
const WIDGET_NAME = "flash_vaed_stats";
const LINE_PX = 15;

const fixed = (x, digits) => (Number.isFinite(x) ? x.toFixed(digits) : "?");

function memoryText(stats) {
    if (!Number.isFinite(stats.peak_mem_mb)) return "peak memory n/a";
    const where = { cuda_max_allocated: "GPU", process_peak_rss: "process RSS" }[stats.peak_mem_kind];
    const size = stats.peak_mem_mb >= 1024 ? `${fixed(stats.peak_mem_mb / 1024, 2)} GB` : `${fixed(stats.peak_mem_mb, 0)} MB`;
    return where ? `peak ${size} (${where})` : `peak ${size}`;
}

function planText(stats) {
    const parts = [];
    if (stats.mode) parts.push(stats.mode);
    if (stats.chunk_frames) parts.push(`chunk ${stats.chunk_frames}`);
    if (stats.tile_px) parts.push(`tile ${stats.tile_px}/${stats.overlap_px ?? 0} px`);
    if (!stats.chunk_frames && !stats.tile_px) parts.push("whole clip");
    if (stats.retries) parts.push(`${stats.retries} OOM retr${stats.retries === 1 ? "y" : "ies"}`);
    if (stats.dtype || stats.device) parts.push([stats.dtype, stats.device].filter(Boolean).join(" on "));
    return parts.join(", ");
}

// The text shown for one entry of flash_vaed_stats.
export function statsLines(stats) {
    const size = Array.isArray(stats.size) ? ` ${stats.size[1]}×${stats.size[0]}` : "";
    return [
        `${stats.frames} frames${size} in ${fixed(stats.seconds, 2)} s · ${fixed(stats.fps, 1)} fps`,
        memoryText(stats),
        planText(stats),
    ].filter(Boolean);
}

function statsWidget(node) {
    const found = node.widgets?.find((w) => w.name === WIDGET_NAME);
    if (found) return found;
    const element = document.createElement("div");
    element.className = "flash-vaed-stats";
    Object.assign(element.style, {
        font: `11px/${LINE_PX}px monospace`,
        color: "var(--descrip-text, #aaa)",
        whiteSpace: "pre",
        overflow: "hidden",
        padding: "2px 6px",
        pointerEvents: "none",
    });
    const MARGIN_PX = 4;
    const height = () => LINE_PX * Math.max(1, element.textContent.split("\n").length) + 4 + 2 * MARGIN_PX;
    // serialize: false keeps it out of saved workflows (widgets_values) and out of the prompt.
    const widget = node.addDOMWidget(WIDGET_NAME, "flash_vaed_stats", element, {
        serialize: false,
        hideOnZoom: false,
        margin: MARGIN_PX,
        getValue: () => element.textContent,
        setValue: (text) => {
            element.textContent = text ?? "";
        },
        getMinHeight: height,
        getMaxHeight: height,
    });
    widget.serialize = false;
    return widget;
}

function showStats(node, entries) {
    const stats = entries[entries.length - 1];
    const lines = statsLines(stats);
    if (entries.length > 1) lines.push(`(last of ${entries.length} decodes)`);
    const widget = statsWidget(node);
    widget.stats = stats;
    widget.value = lines.join("\n");
    const [w, h] = node.computeSize();
    node.setSize([Math.max(node.size[0], w), Math.max(node.size[1], h)]);
    node.setDirtyCanvas(true, true);
}

app.registerExtension({
    name: "FlashVAED.stats",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (nodeData.name !== NODE_TYPE) return;
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
            onExecuted?.apply(this, arguments);
            const entries = message?.[STATS_KEY];
            const list = (Array.isArray(entries) ? entries : [entries]).filter((s) => s && typeof s === "object");
            if (list.length) showStats(this, list);
        };
    },
});
