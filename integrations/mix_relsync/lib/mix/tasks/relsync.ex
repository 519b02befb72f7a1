defmodule Mix.Tasks.Relsync do
  use Mix.Task

  @shortdoc "Builds the release, then syncs it onto a running board (relsync)"

  @moduledoc """
  Builds the project's release and syncs it onto a running board: changed files are copied,
  changed modules reloaded (a GenServer keeps its state).

      MIX_ENV=prod mix relsync -d myex@192.0.2.7 -q /data/relsync

  Runs the relsync command (`$RELSYNC`, else `relsync` on the PATH: `pip install relsync`) in
  the project root as

      relsync --build --profile MIX_ENV [options from the project's config] [arguments]

  so relsync runs `MIX_ENV=... mix release --overwrite` itself and syncs what it built.

  Options can live in `project/0` of mix.exs, under `relsync:`, with relsync's long option
  names as keys (`_` for `-`):

      relsync: [
        destination_node: "myex@192.0.2.7",
        destination_rw_path: "/data/relsync",
        hooks: "Myex.Hooks",
        json: false
      ]

  `true` is a bare flag (`--json`), `false` and `nil` leave the option out, a list of strings
  repeats it (`destination_node: ["a@h1", "b@h2"]`: two boards), anything else is its text.
  The command line comes after them, so it wins. `relsync --help` lists every option.

  relsync's output appears as it prints it; a non-zero exit fails the task.
  """

  @not_found "pip install relsync, or set RELSYNC=/path/to/relsync"

  # How relsync is run: `sh -c @watchdog RELSYNC ARGS...`. The port (:nouse_stdio) talks over
  # descriptors 3 and 4, so relsync keeps mix's stdin, stdout and stderr: the terminal, where
  # its output and progress bar appear as it prints them. It runs in a session of its own,
  # where a Ctrl-C does not reach it; when mix ends (Ctrl-C, or any other way) descriptor 3
  # reads end-of-file and a watchdog interrupts relsync, which ends as on a Ctrl-C of its own
  # (a --watch says "watch ended") instead of running on unseen. relsync keeps descriptor 4
  # open until it exits (the port reports its exit status then).
  @watchdog """
  ( read -r _ <&3; kill -0 $$ 2>/dev/null && kill -INT $$ ) 4>&- </dev/null >/dev/null 2>&1 &
  exec "$0" "$@" 3<&-
  """

  @impl Mix.Task
  def run(args) do
    config = Mix.Project.config()
    options = config |> Keyword.get(:relsync, []) |> to_options()

    build =
      if local_path?(options ++ args),
        do: [],
        else: ["--build", "--profile", to_string(Mix.env())]

    argv = build ++ options ++ args
    exe = executable()

    if Mix.debug?() do
      Mix.shell().info("Running #{exe} #{Enum.join(hide_cookie(argv), " ")}")
    end

    port =
      Port.open({:spawn_executable, "/bin/sh"}, [
        :nouse_stdio,
        :exit_status,
        :binary,
        args: ["-c", @watchdog, exe | argv],
        cd: project_root()
      ])

    case wait(port) do
      0 -> :ok
      code -> Mix.raise("relsync failed with exit code #{code} (its messages are above)")
    end
  end

  # -l PATH: that release is synced as it is, nothing built (relsync refuses --build with -l:
  # it would sync a release it did not build).
  defp local_path?(argv) do
    Enum.any?(argv, &(&1 in ["-l", "--local-path"] or String.starts_with?(&1, "--local-path=")))
  end

  @doc false
  # The project's `relsync:` options as command-line options, in their order.
  def to_options(config) when is_list(config) do
    Enum.flat_map(config, fn
      {key, value} when is_atom(key) -> option(flag(key), value)
      other -> not_keywords(other)
    end)
  end

  def to_options(other), do: not_keywords(other)

  defp not_keywords(what) do
    Mix.raise("relsync: relsync: in mix.exs must be a keyword list (found #{inspect(what)})")
  end

  defp option(_flag, value) when value in [false, nil], do: []
  defp option(flag, true), do: [flag]

  defp option(flag, [first | _] = values) when is_binary(first) do
    Enum.map(values, &"#{flag}=#{&1}")
  end

  defp option(flag, value), do: ["#{flag}=#{value}"]

  defp flag(key), do: "--" <> String.replace(Atom.to_string(key), "_", "-")

  defp project_root do
    case Mix.Project.project_file() do
      nil -> File.cwd!()
      file -> Path.dirname(file)
    end
  end

  defp executable do
    case System.get_env("RELSYNC") do
      empty when empty in [nil, ""] ->
        System.find_executable("relsync") ||
          Mix.raise("relsync: command not found: " <> @not_found)

      given ->
        found =
          if String.contains?(given, "/"),
            do: executable_file(Path.expand(given)),
            else: System.find_executable(given)

        found ||
          Mix.raise(
            "relsync: command not found: RELSYNC=#{given} is not an executable; " <> @not_found
          )
    end
  end

  defp executable_file(path) do
    case File.stat(path) do
      {:ok, %File.Stat{type: :regular, mode: mode}} when Bitwise.band(mode, 0o111) != 0 -> path
      _ -> nil
    end
  end

  defp wait(port) do
    receive do
      {^port, {:exit_status, code}} -> code
      {^port, {:data, _}} -> wait(port)
    end
  end

  defp hide_cookie(["-c", _ | rest]), do: ["-c", "(set)" | hide_cookie(rest)]
  defp hide_cookie(["--cookie", _ | rest]), do: ["--cookie", "(set)" | hide_cookie(rest)]
  defp hide_cookie(["--cookie=" <> _ | rest]), do: ["--cookie=(set)" | hide_cookie(rest)]
  defp hide_cookie([arg | rest]), do: [arg | hide_cookie(rest)]
  defp hide_cookie([]), do: []
end
