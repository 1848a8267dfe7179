// The notes between messages: a turn's result (time, cost, or why it failed) and the
// agent's `system` messages (started, mode changes, compaction, retries, state).

import { h } from "./dom.js";
import { MODES } from "./session-state.js";
import { stopTyping } from "./session-chat.js";
import { markUnfinished } from "./session-tools.js";

function money(x) {
  return x >= 0.01 ? `$${x.toFixed(2)}` : `$${x.toFixed(4)}`;
}

/** `result`: the turn is over. */
export function onResult(v, ev) {
  stopTyping(v);
  markUnfinished(v);
  const parts = [];
  if (Number(ev.duration_ms) > 0) parts.push(`${(ev.duration_ms / 1000).toFixed(1)} s`);
  if (typeof ev.total_cost_usd === "number" && ev.total_cost_usd > 0) parts.push(money(ev.total_cost_usd));
  if (Number(ev.num_turns) > 1) parts.push(`${ev.num_turns} turns`);
  if (ev.is_error || (typeof ev.subtype === "string" && ev.subtype.startsWith("error"))) {
    const errs = Array.isArray(ev.errors) ? ev.errors.map(String).join("; ") : "";
    const el = v.log.errorBlock(`Turn failed${ev.subtype ? ` (${ev.subtype})` : ""}`, [errs || (typeof ev.result === "string" ? ev.result : ""), parts.join(" · ")].filter(Boolean).join(" — "));
    el.classList.add("result");
    return;
  }
  v.log.note(["Turn finished", ...parts].join(" · "), "result");
}

/** `system`: what the agent says about itself. */
export function onSystem(v, ev) {
  const { st, log, settings } = v;
  switch (ev.subtype) {
    case "init":
      if (ev.model) settings.showModel(ev.model);
      if (MODES.includes(ev.permissionMode)) settings.showMode(ev.permissionMode);
      log.note(["Agent started", ev.model, ev.permissionMode && `mode ${ev.permissionMode}`, ev.cwd].filter(Boolean).join(" · "));
      break;
    case "status":
      if (MODES.includes(ev.permissionMode)) settings.showMode(ev.permissionMode);
      if (ev.status === "compacting") log.note("Compacting the conversation…");
      break;
    case "compact_boundary":
      log.note("Conversation compacted", "divider");
      break;
    case "api_retry":
      log.note(`API error, retrying${ev.attempt ? ` (attempt ${ev.attempt})` : ""}…`, "warn");
      break;
    case "local_command_output":
      if (typeof ev.content === "string") log.append(h("pre", { class: "msg out" }, ev.content));
      break;
    case "session_state_changed":
      if (st.info && ["idle", "running", "requires_action"].includes(ev.state)) {
        st.info.session_status = ev.state;
        v.showInfo();
      }
      break;
    default:
      break;
  }
}
