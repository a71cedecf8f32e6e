"""The JavaScript the browser tests run in the JupyterLab page (through Playwright's
`page.evaluate`).

`window.jupyterapp` is the JupyterLab application, exposed by the server's
`--expose-app-in-browser`.
"""

# true once the notebook at `path` is open with an idle kernel; hooks that kernel's error messages
PANEL = """
(path) => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!w || !w.context || w.context.path !== path || !w.sessionContext) return false;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  if (!window.__e2e) {
    window.__e2e = {kernelErrors: []};
    const strip = s => s.replace(/\\u001b\\[[0-9;]*m/g, '');
    kernel.anyMessage.connect((_, a) => {
      const m = a.msg, t = m.header.msg_type;
      if (a.direction !== 'recv' || m.channel !== 'iopub') return;
      if (t === 'error') window.__e2e.kernelErrors.push(strip(m.content.traceback.join('\\n')));
      if (t === 'stream' && m.content.name === 'stderr'
          && /Traceback \\(most recent call last\\)/.test(m.content.text))
        window.__e2e.kernelErrors.push(strip(m.content.text));
    });
  }
  return true;
}
"""

RUN_ALL = """
() => {
  window.__e2e.runAll = 'running';
  window.jupyterapp.commands.execute('notebook:run-all-cells').then(
    ok => { window.__e2e.runAll = ok === false ? 'failed' : 'done'; },
    err => { window.__e2e.runAll = 'rejected: ' + err; });
}
"""

# per code cell: execution count, running or queued, error outputs, stderr tracebacks, source head
CELLS = """
() => {
  const w = window.jupyterapp.shell.currentWidget;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  const strip = s => s.replace(/\\u001b\\[[0-9;]*m/g, '');
  const cells = w.content.widgets.map((c, i) => {
    if (c.model.type !== 'code') return null;
    const outs = c.model.outputs.toJSON();
    const errors = outs.filter(o => o.output_type === 'error')
      .map(o => strip(o.traceback.join('\\n')) || (o.ename + ': ' + o.evalue));
    const stderr = outs.filter(o => o.output_type === 'stream' && o.name === 'stderr'
      && /Traceback \\(most recent call last\\)/.test(o.text)).map(o => strip(o.text));
    const prompt = c.promptNode ? c.promptNode.textContent : '';
    return {index: i, count: c.model.executionCount, running: prompt.includes('*'),
            errors: errors.concat(stderr), source: c.model.sharedModel.getSource().split('\\n')[0]};
  }).filter(c => c);
  return {runAll: window.__e2e.runAll, kernel: kernel ? kernel.status : 'none', cells};
}
"""

# widget views that failed or never rendered, figures not drawn yet
RENDERING = """
() => {
  const views = Array.from(document.querySelectorAll(
    '.jp-Notebook .jp-OutputArea-output'
    + '[data-mime-type="application/vnd.jupyter.widget-view+json"]'));
  const failed = views.filter(v => /Error displaying widget|Failed to load/.test(v.textContent));
  const pending = views.filter(v => !v.querySelector('.jupyter-widgets'));
  const plots = Array.from(document.querySelectorAll('.jp-Notebook .js-plotly-plot'));
  return {failed: failed.map(v => v.textContent.slice(0, 300)), pending: pending.length,
          undrawn: plots.filter(p => !p._fullLayout || !p.data).length};
}
"""

# figure state: "data <hash> layout <hash>" of each drawn figure (its traces; its title,
# annotations, shapes and images), keyed by cell.
# Trace uids and plotly's private `_` keys are left out (a rebuilt but identical figure has new
# uids), and base64 arrays ({dtype, bdata}) are decoded, so the same numbers hash the same however
# they were sent.
FIGURES = """
() => {
  const cells = window.jupyterapp.shell.currentWidget.content.widgets;
  const kinds = {f8: Float64Array, f4: Float32Array, i4: Int32Array, u4: Uint32Array,
                 i2: Int16Array, u2: Uint16Array, i1: Int8Array, u1: Uint8Array,
                 u1c: Uint8ClampedArray};
  const decode = o => { const b = Uint8Array.from(atob(o.bdata), c => c.charCodeAt(0));
    return Array.from(new kinds[o.dtype](b.buffer)); };
  const plain = (k, v) => {
    if (k === 'uid' || k.startsWith('_')) return undefined;
    if (ArrayBuffer.isView(v)) return Array.from(v);
    if (v && typeof v === 'object' && typeof v.bdata === 'string' && kinds[v.dtype]) {
      return decode(v);
    }
    return v; };
  const hash = s => { let h = 2166136261; for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i); h = Math.imul(h, 16777619); }
    return (h >>> 0).toString(16) + ':' + s.length; };
  const out = {}, seen = {};
  for (const p of document.querySelectorAll('.jp-Notebook .js-plotly-plot')) {
    if (!p._fullLayout || !p.data) continue;
    const i = cells.findIndex(c => c.node.contains(p));
    seen[i] = (seen[i] || 0) + 1;
    const l = p.layout || {};
    out['cell ' + i + ' figure ' + seen[i]] = 'data ' + hash(JSON.stringify(p.data, plain)) +
      ' layout ' + hash(JSON.stringify([l.title, l.annotations, l.shapes, l.images], plain));
  }
  return out;
}
"""

# the first push button (not a toggle) in the nearest widget box around the slider:
# a slider + "re-train" UI
BUTTON_NEAR = """
(slider) => {
  for (let box = slider.parentElement; box && !box.classList.contains('jp-OutputArea-output');
       box = box.parentElement) {
    const b = box.querySelector('button.widget-button');
    if (b) return b;
  }
  return null;
}
"""

# where the slider is: its cell, and the text its output shows besides figures (status lines,
# errors)
WHERE = """
(slider) => {
  const cells = window.jupyterapp.shell.currentWidget.content.widgets;
  const out = slider.closest('.jp-OutputArea-output');
  const notes = out
    ? Array.from(out.querySelectorAll('.widget-html, .widget-label, .jp-RenderedText'))
      .map(e => e.textContent.trim()).filter(t => t)
    : [];
  return {cell: cells.findIndex(c => c.node.contains(slider)),
          notes: notes.join(' | ').slice(0, 600)};
}
"""

OPEN = """(path) => { window.__e2e = undefined;
  window.jupyterapp.commands.execute('docmanager:open', {path, factory: 'Notebook'}); }"""

# close every document without a save dialog (the copies are throw-away)
CLOSE_ALL = """() => { for (const w of Array.from(window.jupyterapp.shell.widgets('main'))) {
  if (w.context) w.context.model.dirty = false; w.dispose(); } }"""
