package handheld.chat

import android.app.Activity
import android.os.Bundle
import android.os.Debug
import android.os.SystemClock
import android.view.View
import android.view.ViewGroup.LayoutParams.MATCH_PARENT
import android.view.ViewGroup.LayoutParams.WRAP_CONTENT
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import java.io.File
import java.util.concurrent.Executors
import org.json.JSONArray
import org.json.JSONObject
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmModule

/**
 * One-screen chat over ExecuTorch's Android LLM runner (LlmModule): lists the `.pte` programs and tokenizers
 * in a folder on the device (android_demo/push.sh puts them there), loads a pair, wraps each message in the
 * chosen chat template, streams the reply and shows the runner's timings beside the process's memory.
 */
class MainActivity : Activity() {
    // generate() blocks until the reply ends, so the runner gets a thread of its own; stop() may come from any thread.
    private val worker = Executors.newSingleThreadExecutor()
    @Volatile private var module: LlmModule? = null
    private var template: Template? = null
    private var turns = 0 // turns already in the runner's KV cache: the first one opens the conversation
    @Volatile private var stops: Set<String> = emptySet()
    private val templates by lazy { readTemplates() }

    private lateinit var folder: EditText
    private lateinit var programs: Spinner
    private lateinit var tokenizers: Spinner
    private lateinit var formats: Spinner
    private lateinit var status: TextView
    private lateinit var transcript: TextView
    private lateinit var scroll: ScrollView
    private lateinit var message: EditText
    private lateinit var send: Button
    private lateinit var stop: Button
    private lateinit var idleOnly: List<View>

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        folder = EditText(this).apply { setText(DEFAULT_FOLDER); setSingleLine() }
        programs = Spinner(this)
        tokenizers = Spinner(this)
        formats = Spinner(this).apply { adapter = listAdapter(templates.map { it.name }) }
        status = TextView(this)
        transcript = TextView(this).apply { setTextIsSelectable(true) }
        scroll = ScrollView(this).apply { addView(transcript) }
        message = EditText(this).apply { hint = "Message" }
        send = button("Send") { sendMessage() }
        stop = button("Stop") { module?.stop() }
        val listButton = button("List") { listFolder() }
        val loadButton = button("Load") { loadProgram() }
        val clearButton = button("Clear") { clearChat() }
        idleOnly = listOf(listButton, loadButton, clearButton, programs, tokenizers, formats)
        setContentView(LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            setPadding(24, 24, 24, 24)
            addView(row(folder, listButton))
            addView(programs)
            addView(tokenizers)
            addView(row(formats, loadButton))
            addView(status)
            addView(scroll, LinearLayout.LayoutParams(MATCH_PARENT, 0, 1f))
            addView(row(message, send, stop, clearButton))
        })
        setBusy(false)
        listFolder()
    }

    override fun onDestroy() {
        module?.stop()
        worker.execute { module?.close(); module = null } // after generate() has returned
        worker.shutdown()
        super.onDestroy()
    }

    /** Fills the pickers from the folder; the template follows the chat template that tokenizer_config.json names. */
    private fun listFolder() {
        val dir = File(folder.text.toString().trim())
        val names = dir.listFiles()?.filter { it.isFile }?.map { it.name }?.sorted()
            ?: return say("cannot list $dir: push a program with android_demo/push.sh")
        val ptes = names.filter { it.endsWith(".pte") }
        val toks = names.filter { it.endsWith(".model") || (it.endsWith(".json") && !it.endsWith("config.json")) }
        programs.adapter = listAdapter(ptes)
        tokenizers.adapter = listAdapter(toks)
        val config = File(dir, "tokenizer_config.json")
        if (config.canRead()) {
            val text = config.readText()
            val guess = templates.indexOfFirst { it.marker.isNotEmpty() && it.marker in text }
            if (guess >= 0) formats.setSelection(guess)
        }
        say("${ptes.size} programs and ${toks.size} tokenizers in $dir")
    }

    private fun loadProgram() {
        val dir = folder.text.toString().trim()
        val pte = programs.selectedItem as? String ?: return say("no .pte in $dir")
        val tok = tokenizers.selectedItem as? String ?: return say("no tokenizer in $dir")
        template = templates[formats.selectedItemPosition]
        setBusy(true)
        say("loading $pte")
        worker.execute {
            module?.close()
            module = null
            val started = SystemClock.elapsedRealtime()
            // Temperature 0 is greedy decoding: the same tokens as `handheld generate` on the host.
            val loaded = runCatching { LlmModule("$dir/$pte", "$dir/$tok", 0f).also { it.load() } }
            val seconds = (SystemClock.elapsedRealtime() - started) / 1000.0
            module = loaded.getOrNull()
            runOnUiThread {
                turns = 0
                transcript.text = ""
                say(loaded.fold({ "loaded $pte in %.1f s · %s".format(seconds, memory()) }, { "load failed: ${it.message}" }))
                setBusy(false)
            }
        }
    }

    private fun sendMessage() {
        val llm = module ?: return say("load a program first")
        val format = template ?: return
        val text = message.text.toString().trim()
        if (text.isEmpty()) return
        // The runner keeps the conversation in its KV cache and never feeds it the stop token it sampled, so a
        // later turn first closes the previous reply.
        val prompt = (if (turns == 0) format.opening() else format.end) + format.user.replace("{user}", text)
        message.setText("")
        transcript.append((if (turns == 0) "" else "\n\n") + "> $text\n\n")
        turns++
        stops = format.stops
        setBusy(true)
        worker.execute {
            // seqLen counts the whole context; the runner caps it at the program's max_context_len.
            val failed = runCatching { llm.generate(prompt, Int.MAX_VALUE, callback, false) }.exceptionOrNull()
            runOnUiThread {
                if (failed != null) say("generate failed: ${failed.message} (Clear starts a new conversation)")
                setBusy(false)
            }
        }
    }

    private fun clearChat() {
        val llm = module ?: return
        worker.execute { llm.resetContext() }
        turns = 0
        transcript.text = ""
    }

    // Called on the worker thread while generate() runs.
    private val callback = object : LlmCallback {
        override fun onResult(result: String) {
            if (result in stops) return // the stop token arrives as text: "<|im_end|>", "<|eot_id|>"
            runOnUiThread {
                transcript.append(result)
                scroll.post { scroll.fullScroll(View.FOCUS_DOWN) }
            }
        }

        override fun onStats(stats: String) {
            val line = runCatching { describe(JSONObject(stats)) }.getOrElse { "stats: $stats" }
            runOnUiThread { say(line) }
        }
    }

    /** Rates from the runner's own clock (extension/llm/runner/stats.h): prefill, decode, time to first token. */
    private fun describe(s: JSONObject): String {
        val start = s.getLong("inference_start_ms")
        val prefilled = s.getLong("prompt_eval_end_ms")
        val end = s.getLong("inference_end_ms")
        val prefill = s.getLong("prompt_tokens") * 1000.0 / maxOf(prefilled - start, 1L)
        val decode = s.getLong("generated_tokens") * 1000.0 / maxOf(end - prefilled, 1L)
        val ttft = (s.getLong("first_token_ms") - start) / 1000.0
        return "prefill %.1f tok/s · decode %.1f tok/s · TTFT %.2f s · %s".format(prefill, decode, ttft, memory())
    }

    // Resident set size, as the published phone figures give it: it counts the mapped program's touched pages,
    // which the native heap alone does not.
    private fun memory(): String {
        val kib = File("/proc/self/status").readLines().associate {
            it.substringBefore(':') to (it.substringAfter(':').trim().substringBefore(' ').toLongOrNull() ?: 0L)
        }
        val heap = Debug.getNativeHeapAllocatedSize() shr 20
        return "RSS ${(kib["VmRSS"] ?: 0L) shr 10} MiB (peak ${(kib["VmHWM"] ?: 0L) shr 10}) · native heap $heap MiB"
    }

    private fun setBusy(busy: Boolean) {
        idleOnly.forEach { it.isEnabled = !busy }
        send.isEnabled = !busy
        stop.isEnabled = busy
    }

    private fun say(line: String) {
        status.text = line
    }

    private fun readTemplates(): List<Template> {
        val array = JSONArray(assets.open("templates.json").bufferedReader().use { it.readText() })
        return (0 until array.length()).map { Template(array.getJSONObject(it)) }
    }

    private fun listAdapter(items: List<String>) =
        ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, items)

    private fun button(label: String, onClick: () -> Unit) =
        Button(this).apply { text = label; setOnClickListener { onClick() } }

    private fun row(first: View, vararg rest: View) = LinearLayout(this).apply {
        addView(first, LinearLayout.LayoutParams(0, WRAP_CONTENT, 1f))
        rest.forEach { addView(it) }
    }

    /** A chat format as text pieces (assets/templates.json); tests/test_android_demo.py checks them against the
     *  models' own Jinja templates. */
    private class Template(o: JSONObject) {
        val name: String = o.getString("name")
        val marker: String = o.getString("marker")
        val first: String = o.getString("first")
        val system: String = o.getString("system")
        val defaultSystem: String = o.getString("default_system")
        val user: String = o.getString("user")
        val end: String = o.getString("end")
        val stops: Set<String> = o.getJSONArray("stops").let { a -> (0 until a.length()).map { a.getString(it) }.toSet() }

        fun opening() = first + if (defaultSystem.isEmpty()) "" else system.replace("{system}", defaultSystem)
    }

    private companion object {
        const val DEFAULT_FOLDER = "/data/local/tmp/handheld"
    }
}
